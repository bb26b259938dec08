"""Exactly resumable batching: a sampler wrapper that can skip the batches an interrupted epoch had
already consumed, and a dataset wrapper that makes every batch's augmentation a pure function of
(seed, rank, epoch, batch index).

Why not lhotse's own sampler.state_dict(): with DataLoader workers the sampler runs ahead of the
training loop (prefetching), so its state counts batches the model never saw. Here the training
loop reports how many batches it consumed, and on resume the (deterministic, seed + epoch
shuffled) sampler is replayed and that many batches are skipped without loading any features.
SpecAugment, speed perturbation and MUSAN mixing draw from Python's `random`, numpy and torch's
global RNGs; seeding them per batch inside a forked RNG state makes the augmentation independent of
worker count and of the model's own RNG use (dropout), which the checkpoint saves separately.
"""
from __future__ import annotations

import random
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import torch


class ResumableSampler:
    """Wraps a lhotse CutSampler; yields (epoch, batch_index, CutSet) and can skip a prefix."""

    def __init__(self, sampler):
        self.sampler = sampler
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(self.epoch)

    def state_dict(self, batches_consumed: int) -> Dict[str, int]:
        """The position to resume from: `batches_consumed` batches of the current epoch are done."""
        return {"epoch": self.epoch, "batches_consumed": int(batches_consumed)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.set_epoch(state["epoch"])
        self._skip = int(state["batches_consumed"])

    def __iter__(self) -> Iterator[Tuple[int, int, Any]]:
        skip, self._skip = self._skip, 0  # the skip applies to the first pass after a restore only
        for index, cuts in enumerate(self.sampler):
            if index >= skip:
                yield self.epoch, index, cuts

    def __len__(self):
        raise TypeError("the number of dynamic batches is not known in advance")


def batch_seed(seed: int, rank: int, epoch: int, index: int) -> int:
    """A 63-bit seed that differs for every (seed, rank, epoch, batch) combination."""
    hi, lo = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(epoch), int(index)]
                                    ).generate_state(2, dtype=np.uint32).tolist()
    return ((hi & 0x7FFFFFFF) << 32) | lo


class SeededBatchDataset(torch.utils.data.Dataset):
    """Runs a lhotse dataset on one sampler item with its augmentation RNGs seeded per batch.

    `rngs` are `random.Random` instances owned by cut transforms (PerturbSpeed, CutMix); they are
    reseeded too. The returned batch gets "epoch" and "batch_index" entries.
    """

    def __init__(self, inner, seed: int, rank: int = 0, rngs: List[random.Random] = ()):
        self.inner = inner
        self.seed = seed
        self.rank = rank
        self.rngs = list(rngs)

    def __getitem__(self, item):
        epoch, index, cuts = item
        s = batch_seed(self.seed, self.rank, epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            random.seed(s)
            np.random.seed(s % (2 ** 32))
            torch.manual_seed(s)
            for k, rng in enumerate(self.rngs):
                rng.seed(s + k + 1)
            try:
                batch = self.inner[cuts]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)
        batch["epoch"], batch["batch_index"] = epoch, index
        return batch

    def __len__(self):
        raise TypeError("batches are produced by the sampler; there is no fixed length")
