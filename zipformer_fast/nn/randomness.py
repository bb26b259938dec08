"""Where the training-time random decisions are drawn: Python's `random` (icefall's way) or on device.

icefall decides every stochastic trick (Balancer/Whiten firing, layer and module skipping, the
positional-embedding skip, limit_param_value) with `random.random()` in Python and branches on the
result, and reads its ScheduledFloats as Python floats. That is what eager mode does here (same draws,
same order as icefall). Under torch.compile both would specialise the graph: a random Python branch
or a batch-count-dependent float is a guard that fails on the next step. So while tracing -- or
when asked with `use_device_side_randomness()` -- every decision is drawn with torch.rand on the
input's device and applied by multiplying with a 0/1 mask or torch.where, and schedules are 0-dim
tensors computed from a batch-count tensor (see scheduled_float). The rates are the same; the
random stream is torch's, not Python's, so eager and device-side runs take different draws.
Running eager with device-side randomness gives exactly the compiled graph's computation (same
torch.rand calls in the same order), which is how compiled training is checked against eager.
"""
from __future__ import annotations

import contextlib

import torch

_forced = [False]


def device_side() -> bool:
    """True while dynamo traces, or inside `use_device_side_randomness()`."""
    return torch.compiler.is_compiling() or _forced[-1]


@contextlib.contextmanager
def use_device_side_randomness(enabled: bool = True):
    """Eager code in the block draws its random decisions as the compiled graph does."""
    _forced.append(bool(enabled))
    try:
        yield
    finally:
        _forced.pop()


def keep_mask(shape, rate, device, dtype=None) -> torch.Tensor:
    """A keep mask (True with probability 1 - rate) drawn on device; `rate` a float or 0-dim tensor.
    `>=` keeps everything when the rate is exactly 0 (icefall's `>` would drop a 0.0 draw)."""
    mask = torch.rand(shape, device=device) >= rate
    return mask if dtype is None else mask.to(dtype)


def record_draw(record: torch.Tensor, fire: torch.Tensor) -> torch.Tensor:
    """Write `fire`, a decision only backward reads (does a Balancer, Whiten or limit_param_value
    act on this call), into `record`, a 0-dim bool buffer of the module that drew it; return fire.

    Why the write: AOTAutograd's min-cut partitioner (inductor's, and aot_eager's) puts a node that
    no forward output needs into the backward graph, so such a torch.rand would be drawn during
    backward, and every later draw of the forward (dropout, skip masks) would take other numbers
    than eager's with the same seed. A write into a module buffer is a forward-graph mutation, which
    keeps the draw in the forward, at the point where eager draws it."""
    record.copy_(fire)
    return fire
