"""ScheduledFloat: a float that is a piecewise-linear function of the training batch count, and
`set_batch_count`, which the training loop calls to move every schedule in a model.

Semantics follow icefall's scaling.ScheduledFloat exactly: it is an nn.Module only so that it shows
up in `model.modules()` (and so `model.eval()` reaches it); `float(sf)` returns `default` when no
batch count was set, when the module is in eval mode, or under jit; otherwise the schedule's value
(flat before the first and after the last breakpoint). icefall also draws one `random.random()` per
scheduled read (for occasional logging); we draw it too so that the Python `random` stream, which
decides every stochastic training trick, advances exactly as in icefall.

Under torch.compile (or `use_device_side_randomness`) modules read schedules with `value(sf)`
instead of float(): a 0-dim tensor computed from `batch_count_tensor`, one float32 tensor shared by
every schedule of a model and updated in place by set_batch_count, so that a new batch count is new
data for the compiled graph, not a new constant it guards on. Eval mode and an unset batch count
give the Python default, as float() does.
"""
from __future__ import annotations

import random
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from .randomness import device_side


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
        self.batch_count_tensor: Optional[Tensor] = None  # shared, updated in place by set_batch_count()

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

    def as_tensor(self) -> Union[float, Tensor]:
        """The schedule as a 0-dim float32 tensor of batch_count_tensor (same piecewise-linear
        function); the Python default where float() would return it."""
        bc = self.batch_count_tensor
        if bc is None or not self.training:
            return self.default
        pts = self.points
        ans = torch.full_like(bc, pts[0][1])
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            ans = torch.where(bc > x0, y0 + (y1 - y0) * ((bc - x0) / (x1 - x0)), ans)
        return torch.where(bc >= pts[-1][0], torch.full_like(bc, pts[-1][1]), ans)

    def extra_repr(self) -> str:
        return f"points={self.points}, default={self.default}, batch_count={self.batch_count}"


FloatLike = Union[float, ScheduledFloat]


def value(x: FloatLike) -> Union[float, Tensor]:
    """float(x), or under device-side randomness (torch.compile) a schedule's 0-dim tensor."""
    if isinstance(x, ScheduledFloat) and device_side():
        return x.as_tensor()
    return float(x)


def set_batch_count(model: nn.Module, batch_count: float) -> None:
    """Set `batch_count` on every submodule, as icefall's train.py does every 10 batches.

    `batch_count` is icefall's *adjusted* count: batch_idx_train * max_duration * world_size / 600.
    """
    shared = None
    for module in model.modules():
        module.batch_count = float(batch_count)
        if isinstance(module, ScheduledFloat):
            if shared is None:
                shared = _batch_count_tensor(model, module)
            module.batch_count_tensor = shared
    if shared is not None:
        with torch.no_grad():
            shared.fill_(float(batch_count))


def _batch_count_tensor(model: nn.Module, schedule: ScheduledFloat) -> Tensor:
    """The model's shared batch-count tensor (reused, so compiled graphs see the same input), on
    the device of the model's parameters."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    old = schedule.batch_count_tensor
    if old is not None and old.device == device:
        return old
    return torch.zeros((), dtype=torch.float32, device=device)
