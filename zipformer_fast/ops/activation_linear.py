"""Activation -> shared-dim dropout -> linear (icefall's ActivationDropoutAndLinear).

    y = linear(swoosh(x) * dropout_mask, weight, bias)

`dropout_mask` is None (eval, or p = 0) or a tensor broadcastable to x holding 0 or 1/(1-p); the
caller draws it (see `make_dropout_mask`) so that the reference and fused paths consume the same
random numbers. icefall's autograd function saves only x, weight, bias and the small mask and
recomputes the activation in backward; the reference here uses plain autograd (it stores the
activation output too), the fused path (Triton-kernels issue) never stores it.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .swoosh import swoosh_l_reference, swoosh_r_reference

ACTIVATIONS = ("SwooshL", "SwooshR")


def make_dropout_mask(x: Tensor, p: float, shared_dim: Optional[int]) -> Optional[Tensor]:
    """icefall's Dropout3-style mask: shape of x with `shared_dim` set to 1, values 0 or 1/(1-p)."""
    if p == 0.0:
        return None
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1
    keep = torch.rand(*shape, device=x.device, dtype=x.dtype) > p
    return keep.to(x.dtype) * (1.0 / (1.0 - p))


def activation_dropout_linear_reference(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, dropout_mask: Optional[Tensor] = None
) -> Tensor:
    if activation == "SwooshL":
        h = swoosh_l_reference(x)
    elif activation == "SwooshR":
        h = swoosh_r_reference(x)
    else:
        raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
    if dropout_mask is not None:
        h = h * dropout_mask
    return torch.nn.functional.linear(h, weight, bias)


def activation_dropout_linear(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, dropout_mask: Optional[Tensor] = None
) -> Tensor:
    return activation_dropout_linear_reference(x, weight, bias, activation, dropout_mask)
