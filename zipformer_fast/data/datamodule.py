"""The lhotse data module used by recipes/train.py and recipes/decode.py (icefall's
`asr_datamodule.py`, made exactly resumable).

Training batches come from a DynamicBucketingSampler (batches bounded by total seconds of audio)
whose number of buckets and buffer sizes are fitted to the data (bucketing.py), optionally with
on-the-fly speed perturbation (0.9 / 1.1, p = 2/3), MUSAN noise mixing (CutMix, p 0.5, SNR 10-20 dB)
and SpecAugment. Features are the precomputed 80-dim Fbank of the cut manifests, or computed on the
fly: on request (required with on-the-fly speed perturbation) and for any cut set whose cuts carry
no features (a user's own lhotse manifests).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .bucketing import BucketPlan, plan_bucketing
from .optional import require
from .resumable import ResumableSampler, SeededBatchDataset


@dataclass
class DataConfig:
    max_duration: float = 200.0       # seconds of audio per batch (per rank)
    num_buckets: int = 30             # a maximum: capped so that every bucket can fill batches
    shuffle: bool = True
    drop_last: bool = True
    num_workers: int = 0
    seed: int = 42
    spec_augment: bool = True
    time_warp_factor: int = 80
    num_frame_masks: int = 10
    features_mask_size: int = 27
    num_feature_masks: int = 2
    frames_mask_size: int = 100
    on_the_fly_feats: bool = False
    speed_perturb: bool = False       # on the fly; offline perturbation is done at prepare time
    musan_cuts: Optional[str] = None  # path to a MUSAN cut manifest (with features unless on the fly)


class AsrDataModule:
    """Builds resumable training and deterministic evaluation dataloaders over lhotse cuts."""

    def __init__(self, config: DataConfig, rank: int = 0, world_size: int = 1):
        require("lhotse")
        self.config = config
        self.rank, self.world_size = rank, world_size
        if config.speed_perturb and not config.on_the_fly_feats:
            raise ValueError("on-the-fly speed perturbation needs on_the_fly_feats=True "
                             "(precomputed features cannot be resampled); or perturb offline at prepare time")
        self.train_plan: Optional[BucketPlan] = None  # set by train_dataloader

    def _input_strategy(self, cuts=None):
        from lhotse.dataset import OnTheFlyFeatures, PrecomputedFeatures
        if self.config.on_the_fly_feats or (cuts is not None and not has_features(cuts)):
            from .manifests import fbank_extractor
            return OnTheFlyFeatures(fbank_extractor())
        return PrecomputedFeatures()

    def train_dataloader(self, cuts) -> torch.utils.data.DataLoader:
        from lhotse.dataset import (CutMix, DynamicBucketingSampler, DynamicCutSampler,
                                    K2SpeechRecognitionDataset, PerturbSpeed, SpecAugment)
        c = self.config
        rngs, cut_transforms, input_transforms = [], [], []
        if c.speed_perturb:
            rngs.append(random.Random(0))
            cut_transforms.append(PerturbSpeed(factors=[0.9, 1.1], p=2 / 3, randgen=rngs[-1]))
        if c.musan_cuts:
            from .manifests import load_musan
            rngs.append(random.Random(0))
            cut_transforms.append(CutMix(cuts=load_musan(c.musan_cuts), p=0.5, snr=(10, 20),
                                         preserve_id=True, seed=rngs[-1]))
        if c.spec_augment:
            input_transforms.append(SpecAugment(
                time_warp_factor=c.time_warp_factor, num_frame_masks=c.num_frame_masks,
                features_mask_size=c.features_mask_size, num_feature_masks=c.num_feature_masks,
                frames_mask_size=c.frames_mask_size))
        dataset = K2SpeechRecognitionDataset(
            return_cuts=True, cut_transforms=cut_transforms, input_transforms=input_transforms,
            input_strategy=self._input_strategy(cuts))
        plan = self.train_plan = plan_bucketing(cuts, c.max_duration, c.num_buckets, self.world_size, c.drop_last)
        common = dict(max_duration=c.max_duration, shuffle=c.shuffle, drop_last=c.drop_last, seed=c.seed,
                      shuffle_buffer_size=plan.shuffle_buffer_size, world_size=self.world_size, rank=self.rank)
        if plan.num_buckets > 1:
            sampler = DynamicBucketingSampler(
                cuts, num_buckets=plan.num_buckets, buffer_size=plan.buffer_size,
                num_cuts_for_bins_estimate=plan.bins_estimate_cuts, **common)
        else:  # lhotse's bucketing needs two buckets or more; one bucket is plain dynamic batching
            sampler = DynamicCutSampler(cuts, **common)
        return self._loader(SeededBatchDataset(dataset, c.seed, self.rank, rngs), ResumableSampler(sampler))

    def eval_dataloader(self, cuts, max_duration: Optional[float] = None,
                        shard: bool = True) -> torch.utils.data.DataLoader:
        """Deterministic batches without augmentation. shard=True splits the cuts over the ranks."""
        from lhotse.dataset import K2SpeechRecognitionDataset, SimpleCutSampler
        dataset = K2SpeechRecognitionDataset(return_cuts=True, input_strategy=self._input_strategy(cuts))
        # In manifest order (no duration bins to estimate: works for any number of cuts).
        sampler = SimpleCutSampler(
            cuts, max_duration=max_duration or self.config.max_duration, shuffle=False, drop_last=False,
            world_size=self.world_size if shard else 1, rank=self.rank if shard else 0)
        return self._loader(SeededBatchDataset(dataset, self.config.seed, self.rank), ResumableSampler(sampler))

    def _loader(self, dataset, sampler) -> torch.utils.data.DataLoader:
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            dataset, sampler=sampler, batch_size=None, num_workers=workers,
            persistent_workers=False, prefetch_factor=2 if workers > 0 else None)


def has_features(cuts) -> bool:
    """Whether the cut set carries precomputed features (judged by its first cut; prepare steps
    write all-or-nothing manifests). An empty set counts as having them."""
    for cut in cuts:
        return cut.has_features
    return True


def batch_inputs(batch, device: Union[str, torch.device] = "cpu"):
    """(features (B,T,80), feature_lens (B,), texts, cut ids) from a K2SpeechRecognitionDataset batch.

    Cuts are single-supervision here (one transcript per recording), which icefall assumes too.
    """
    feats = batch["inputs"]
    sup = batch["supervisions"]
    if feats.ndim != 3:
        raise ValueError(f"expected features (B, T, F), got shape {tuple(feats.shape)}")
    if len(sup["text"]) != feats.size(0):
        raise ValueError("each cut must have exactly one supervision (trim_to_supervisions first)")
    order = sup["sequence_idx"].tolist()
    if order != list(range(feats.size(0))):
        raise ValueError("supervisions are not aligned with the batch rows")
    lens = sup["num_frames"].to(torch.int64)
    ids = [c.id for c in sup["cut"]] if "cut" in sup else [None] * feats.size(0)
    return feats.to(device), lens.to(device), list(sup["text"]), ids


def load_split(manifest_dir: Union[str, Path], name: str, lazy: bool = False):
    """Load `<manifest_dir>/cuts_<name>.jsonl.gz` (the file name every prepare step writes)."""
    from .manifests import load_cuts
    return load_cuts(Path(manifest_dir) / f"cuts_{name}.jsonl.gz", lazy=lazy)
