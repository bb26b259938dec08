"""SwooshL / SwooshR activations (paper eq. 5; icefall scaling.py, k2 swoosh).

    SwooshL(x) = softplus(x - 4) - 0.08 x - 0.035
    SwooshR(x) = softplus(x - 1) - 0.08 x - 0.313261687      (log(1 + e^-1), so SwooshR(0) = 0)

Computed in fp32 whatever the input dtype; where log(1 + e^z) overflows to inf, z itself is used
(icefall's SwooshLForward). Reference path: plain autograd of that formula.
Fused path (kernels/swoosh.py, added by the Triton-kernels issue): see `swoosh_l` / `swoosh_r`.
"""
from __future__ import annotations

import torch
from torch import Tensor

SWOOSH_L_SHIFT, SWOOSH_L_OFFSET = 4.0, 0.035
SWOOSH_R_SHIFT, SWOOSH_R_OFFSET = 1.0, 0.313261687


def swoosh_reference(x: Tensor, shift: float, offset: float) -> Tensor:
    xf = x.float()
    z = xf - shift
    log_sum = torch.log1p(torch.exp(z))
    log_sum = torch.where(torch.isinf(log_sum), z, log_sum)
    return (log_sum - 0.08 * xf - offset).to(x.dtype)


def swoosh_l_reference(x: Tensor) -> Tensor:
    return swoosh_reference(x, SWOOSH_L_SHIFT, SWOOSH_L_OFFSET)


def swoosh_r_reference(x: Tensor) -> Tensor:
    return swoosh_reference(x, SWOOSH_R_SHIFT, SWOOSH_R_OFFSET)


def swoosh_l(x: Tensor) -> Tensor:
    return swoosh_l_reference(x)


def swoosh_r(x: Tensor) -> Tensor:
    return swoosh_r_reference(x)
