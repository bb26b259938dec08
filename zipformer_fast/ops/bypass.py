"""Bypass combiner (icefall BypassModule): out = x_orig + (x - x_orig) * c.

`scale` c is (D,) or (B, D) (the latter when per-sequence layer-skipping zeroed some rows); x and
x_orig are (T, B, D). The clamping of c (limit_param_value) and the skip mask are applied by the
module; the op is the elementwise combination.
"""
from __future__ import annotations

from torch import Tensor


def bypass_reference(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    return x_orig + (x - x_orig) * scale


def bypass(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    return bypass_reference(x_orig, x, scale)
