"""Eden and Eden2 learning-rate schedules (icefall egs/librispeech/ASR/zipformer/optim.py): the lr depends
on the batch index and (Eden) the epoch, set explicitly with step_batch / step_epoch.

  Eden:  lr = base * ((b^2 + B^2)/B^2)^-0.25 * ((e^2 + E^2)/E^2)^-0.25 * warmup(b)
  Eden2: lr = base * ((b^2 + B^2)/B^2)^-0.5 * warmup(b)
  warmup(b) = warmup_start + (1 - warmup_start) * b / warmup_batches for b < warmup_batches, else 1.
state_dict holds only epoch and batch (base_lrs come from the optimizer's groups, as icefall).
"""
from __future__ import annotations

import logging
from typing import List, Optional, Union

from torch.optim import Optimizer

logger = logging.getLogger("zipformer_fast.optim")


class LRScheduler:
    """Base class: lr as a function of (batch, epoch, base_lr); subclasses define get_lr."""

    def __init__(self, optimizer: Optimizer, verbose: bool = False):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")
        self.optimizer = optimizer
        self.verbose = verbose
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
        self.base_lrs = [group["base_lr"] for group in optimizer.param_groups]
        self.epoch = 0
        self.batch = 0
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state_dict: dict) -> None:
        base_lrs = self.base_lrs  # older icefall checkpoints also saved base_lrs: ignore them
        self.__dict__.update(state_dict)
        self.base_lrs = base_lrs

    def get_last_lr(self) -> List[float]:
        return self._last_lr

    def get_lr(self) -> List[float]:
        raise NotImplementedError

    def step_batch(self, batch: Optional[int] = None) -> None:
        """Set the global batch index (summed over epochs), or advance it by one."""
        self.batch = batch if batch is not None else self.batch + 1
        self._set_lrs()

    def step_epoch(self, epoch: Optional[int] = None) -> None:
        """Set the epoch (call at the start of an epoch), or advance it by one (at the end)."""
        self.epoch = epoch if epoch is not None else self.epoch + 1
        self._set_lrs()

    def _set_lrs(self) -> None:
        values = self.get_lr()
        if len(values) != len(self.optimizer.param_groups):
            raise RuntimeError("get_lr returned the wrong number of values")
        for i, (group, lr) in enumerate(zip(self.optimizer.param_groups, values)):
            group["lr"] = lr
            if self.verbose:
                logger.warning("Epoch=%s, batch=%s: adjusting learning rate of group %d to %.4e.",
                               self.epoch, self.batch, i, lr)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


def _warmup(batch, warmup_batches, warmup_start) -> float:
    if batch >= warmup_batches:
        return 1.0
    return warmup_start + (1.0 - warmup_start) * (batch / warmup_batches)


class Eden(LRScheduler):
    def __init__(self, optimizer: Optimizer, lr_batches: Union[int, float],
                 lr_epochs: Union[int, float], warmup_batches: Union[int, float] = 500.0,
                 warmup_start: float = 0.5, verbose: bool = False):
        super().__init__(optimizer, verbose)
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start={warmup_start} must be in [0, 1]")
        self.lr_batches = lr_batches
        self.lr_epochs = lr_epochs
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start

    def get_lr(self) -> List[float]:
        factor = ((self.batch ** 2 + self.lr_batches ** 2) / self.lr_batches ** 2) ** -0.25 * (
            ((self.epoch ** 2 + self.lr_epochs ** 2) / self.lr_epochs ** 2) ** -0.25)
        w = _warmup(self.batch, self.warmup_batches, self.warmup_start)
        return [x * factor * w for x in self.base_lrs]


class Eden2(LRScheduler):
    def __init__(self, optimizer: Optimizer, lr_batches: Union[int, float],
                 warmup_batches: Union[int, float] = 500.0, warmup_start: float = 0.5,
                 verbose: bool = False):
        super().__init__(optimizer, verbose)
        if not 0.0 <= warmup_start <= 1.0:
            raise ValueError(f"warmup_start={warmup_start} must be in [0, 1]")
        self.lr_batches = lr_batches
        self.warmup_batches = warmup_batches
        self.warmup_start = warmup_start

    def get_lr(self) -> List[float]:
        factor = ((self.batch ** 2 + self.lr_batches ** 2) / self.lr_batches ** 2) ** -0.5
        w = _warmup(self.batch, self.warmup_batches, self.warmup_start)
        return [x * factor * w for x in self.base_lrs]
