"""SwooshL / SwooshR as modules (used standalone in Conv-Embed and its ConvNeXt block).

The math lives in zipformer_fast.ops.swoosh so that a fused kernel can replace it. icefall's k2
versions store the derivative as a stochastically rounded uint8 (a memory trick with unbiased,
~1/255-quantised gradients); the reference path here uses the exact derivative.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..ops.swoosh import swoosh_l, swoosh_r


class SwooshL(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_l(x)


class SwooshR(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return swoosh_r(x)
