"""BiasNorm (paper eq. 4; icefall BiasNorm):

    y = x * exp(log_scale) / sqrt(mean_c((x - bias)^2))

over the channel dim (last). The bias enters only the RMS; there is no epsilon. `log_scale` is a
0-dim tensor. The training-time soft limit on log_scale (limit_param_value) is applied by the module
before calling this op. Statistics are computed in fp32.
"""
from __future__ import annotations

import torch
from torch import Tensor


def bias_norm_reference(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    xf = x.float()
    scales = (torch.mean((xf - bias.float()) ** 2, dim=-1, keepdim=True) ** -0.5) * log_scale.float().exp()
    return (xf * scales).to(x.dtype)


def bias_norm(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    return bias_norm_reference(x, log_scale, bias)
