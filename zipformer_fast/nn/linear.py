"""ScaledLinear / ScaledConv initialisation helpers and ActivationDropoutAndLinear.

icefall's "Scaled" layers are plain nn layers whose default init is rescaled: weight *= s and bias
re-drawn from U(-0.1 s, 0.1 s). No extra parameters exist, so checkpoints hold plain weights.

ActivationDropoutAndLinear keeps `weight` and `bias` directly on the module (checkpoint keys
`...out_proj.weight`/`.bias`) and calls zipformer_fast.ops.activation_dropout_linear with a mask
from make_dropout_mask, so a fused kernel can replace the math while consuming the same random
numbers. Dropout is applied only in training (icefall's p is a ScheduledFloat whose eval value is 0).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.activation_linear import ACTIVATIONS, activation_dropout_linear, make_dropout_mask
from .scheduled_float import FloatLike, value


def _rescale_(module: nn.Module, initial_scale: float) -> nn.Module:
    with torch.no_grad():
        module.weight.mul_(initial_scale)
        if module.bias is not None:
            nn.init.uniform_(module.bias, -0.1 * initial_scale, 0.1 * initial_scale)
    return module


def ScaledLinear(*args, initial_scale: float = 1.0, **kwargs) -> nn.Linear:  # noqa: N802 (icefall name)
    return _rescale_(nn.Linear(*args, **kwargs), initial_scale)


def ScaledConv1d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv1d:  # noqa: N802
    return _rescale_(nn.Conv1d(*args, **kwargs), initial_scale)


def ScaledConv2d(*args, initial_scale: float = 1.0, **kwargs) -> nn.Conv2d:  # noqa: N802
    return _rescale_(nn.Conv2d(*args, **kwargs), initial_scale)


def _scheduled_dropout_mask(x: Tensor, p: Tensor, shared_dim: Optional[int]) -> Tensor:
    """make_dropout_mask for a 0-dim tensor p (a schedule under torch.compile): same draw, same
    formula, and no `p == 0` branch (a zero p keeps every element with scale 1)."""
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1
    keep = torch.rand(*shape, device=x.device, dtype=x.dtype) > p
    return keep.to(x.dtype) * (1.0 / (1.0 - p))


class ActivationDropoutAndLinear(nn.Module):
    """linear(dropout(activation(x))) with activation "SwooshL" or "SwooshR"."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, activation: str = "SwooshL",
                 dropout_p: FloatLike = 0.0, dropout_shared_dim: Optional[int] = -1,
                 initial_scale: float = 1.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
        lin = ScaledLinear(in_channels, out_channels, bias=bias, initial_scale=initial_scale)
        self.weight = lin.weight
        self.register_parameter("bias", lin.bias)
        self.activation = activation
        self.dropout_p = dropout_p
        self.dropout_shared_dim = dropout_shared_dim

    def forward(self, x: Tensor) -> Tensor:
        mask = None
        if self.training:
            p = value(self.dropout_p)
            if isinstance(p, Tensor):
                mask = _scheduled_dropout_mask(x, p, self.dropout_shared_dim)
            else:
                mask = make_dropout_mask(x, p, self.dropout_shared_dim)
        return activation_dropout_linear(x, self.weight, self.bias, self.activation, mask)
