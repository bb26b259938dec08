"""Dropout2 (plain dropout with a schedulable p) and Dropout3 (one mask shared along a dim).

Dropout3 is icefall's: the mask has size 1 on `shared_dim` (e.g. one mask per sequence shared by all
frames), values 0 or 1/(1-p); it is drawn with torch.rand in the input's shape so that the same
seed gives the same mask as icefall.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .randomness import device_side, keep_mask
from .scheduled_float import FloatLike, value


class Dropout2(nn.Module):
    def __init__(self, p: FloatLike):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.training and device_side():
            # An explicit torch.rand mask (F.dropout wants a Python float p, and compiled graphs
            # decompose it into other random calls than eager's kernel: eager and compiled would
            # then draw different masks from the same seed).
            p = value(self.p)
            return x * keep_mask(x.shape, p, x.device, x.dtype) * (1.0 / (1.0 - p))
        return nn.functional.dropout(x, p=float(self.p), training=self.training)


class Dropout3(nn.Module):
    def __init__(self, p: FloatLike, shared_dim: int):
        super().__init__()
        self.p = p
        self.shared_dim = shared_dim

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        p = value(self.p)
        if not isinstance(p, Tensor) and p == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        keep = torch.rand(*shape, device=x.device) > p
        return x * keep * (1.0 / (1.0 - p))
