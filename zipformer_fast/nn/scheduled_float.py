"""ScheduledFloat: a float that is a piecewise-linear function of the training batch count, and
`set_batch_count`, which the training loop calls to move every schedule in a model.

Semantics follow icefall's scaling.ScheduledFloat exactly: it is an nn.Module only so that it shows
up in `model.modules()` (and so `model.eval()` reaches it); `float(sf)` returns `default` when no
batch count was set, when the module is in eval mode, or under jit; otherwise the schedule's value
(flat before the first and after the last breakpoint). icefall also draws one `random.random()` per
scheduled read (for occasional logging); we draw it too so that the Python `random` stream, which
decides every stochastic training trick, advances exactly as in icefall.
"""
from __future__ import annotations

import random
from typing import Tuple, Union

import torch
from torch import nn


class ScheduledFloat(nn.Module):
    """`ScheduledFloat((x0, y0), (x1, y1), ..., default=d)`; x values strictly increasing."""

    def __init__(self, *points: Tuple[float, float], default: float = 0.0):
        super().__init__()
        if len(points) == 0:
            raise ValueError("ScheduledFloat needs at least one (batch_count, value) point")
        self.points = [(float(x), float(y)) for x, y in points]
        for (x0, _), (x1, _) in zip(self.points, self.points[1:]):
            if not x1 > x0:
                raise ValueError(f"ScheduledFloat: x values must increase, got {self.points}")
        self.default = float(default)
        self.batch_count = None  # written by set_batch_count()

    def value_at(self, batch_count: float) -> float:
        """The schedule itself (ignores training mode and default)."""
        pts = self.points
        if batch_count <= pts[0][0]:
            return pts[0][1]
        if batch_count >= pts[-1][0]:
            return pts[-1][1]
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            if x0 <= batch_count <= x1:
                return y0 + (y1 - y0) * (batch_count - x0) / (x1 - x0)
        raise AssertionError("unreachable")

    def __float__(self) -> float:
        if (self.batch_count is None or not self.training
                or torch.jit.is_scripting() or torch.jit.is_tracing()):
            return self.default
        ans = self.value_at(self.batch_count)
        random.random()  # icefall's 0.0002-probability log line; keeps the random stream aligned
        return ans

    def extra_repr(self) -> str:
        return f"points={self.points}, default={self.default}, batch_count={self.batch_count}"


FloatLike = Union[float, ScheduledFloat]


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Set `batch_count` on every submodule, as icefall's train.py does every 10 batches.

    `batch_count` is icefall's *adjusted* count: batch_idx_train * max_duration * world_size / 600.
    """
    for module in model.modules():
        module.batch_count = float(batch_count)
