"""BiasNorm module (icefall): y = x * exp(log_scale) / rms(x - bias) over the last dim.

Parameters are registered log_scale (0-dim, init 1.0) then bias (C,), which fixes the state-dict
order. In training, log_scale passes through limit_param_value([-1.5, 1.5]) (gradient-sign flips,
forward unchanged). The math is zipformer_fast.ops.bias_norm.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops.bias_norm import bias_norm
from .grad_shapers import limit_param_value


class BiasNorm(nn.Module):
    def __init__(self, num_channels: int, log_scale: float = 1.0,
                 log_scale_min: float = -1.5, log_scale_max: float = 1.5):
        super().__init__()
        self.num_channels = num_channels
        self.log_scale = nn.Parameter(torch.tensor(log_scale))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale_min = log_scale_min
        self.log_scale_max = log_scale_max
        # Whether limit_param_value acted on the last device-side draw (not in the state dict).
        self.register_buffer("log_scale_limit_fired", torch.zeros((), dtype=torch.bool), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return bias_norm(x, self.limited_log_scale(), self.bias)

    def check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.num_channels:
            raise ValueError(f"BiasNorm: expected {self.num_channels} channels, got shape {tuple(x.shape)}")

    def limited_log_scale(self) -> Tensor:
        """log_scale as forward uses it (in training through limit_param_value: one random draw)."""
        return limit_param_value(self.log_scale, min=float(self.log_scale_min), max=float(self.log_scale_max),
                                 training=self.training, record=self.log_scale_limit_fired)
