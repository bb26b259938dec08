"""BypassModule (icefall): out = x_orig + (x - x_orig) * c with a learned per-channel c.

Training: c goes through limit_param_value([scale_min, scale_max]) (scale_min is scheduled
0.9 -> 0.2 over 20k batches; gradient-sign flips only), and with skip_rate > 0 c is multiplied by a
per-sequence keep mask (B, 1): a zero row bypasses the whole module for that sequence (layer drop).
Eval: the raw parameter. The elementwise combine is zipformer_fast.ops.bypass.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from ..ops.bias_norm_bypass import bias_norm_bypass
from ..ops.bypass import bypass
from .grad_shapers import limit_param_value
from .randomness import device_side, keep_mask
from .scheduled_float import FloatLike, ScheduledFloat, value


class BypassModule(nn.Module):
    def __init__(self, embed_dim: int, skip_rate: FloatLike = 0.0, straight_through_rate: FloatLike = 0.0,
                 scale_min: FloatLike = None, scale_max: FloatLike = 1.0):
        super().__init__()
        if scale_min is None:
            scale_min = ScheduledFloat((0.0, 0.9), (20000.0, 0.2), default=0)
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.skip_rate = copy.deepcopy(skip_rate)
        self.straight_through_rate = copy.deepcopy(straight_through_rate)
        self.scale_min = copy.deepcopy(scale_min)
        self.scale_max = copy.deepcopy(scale_max)
        # Whether limit_param_value acted on the last device-side draw (not in the state dict).
        self.register_buffer("scale_limit_fired", torch.zeros((), dtype=torch.bool), persistent=False)

    def get_scale(self, batch_size: int) -> Tensor:
        """(D,) in eval; in training (D,) or (B, D) with zero rows for skipped sequences."""
        if torch.jit.is_scripting() or torch.jit.is_tracing() or not self.training:
            return self.bypass_scale
        if device_side():
            return self._get_scale_on_device(batch_size)
        ans = limit_param_value(self.bypass_scale, min=float(self.scale_min), max=float(self.scale_max))
        skip_rate = float(self.skip_rate)
        if skip_rate != 0.0:
            keep = torch.rand((batch_size, 1), device=ans.device) > skip_rate
            ans = ans * keep
        straight_through_rate = float(self.straight_through_rate)
        if straight_through_rate != 0.0:
            st = torch.rand((batch_size, 1), device=ans.device) < straight_through_rate
            ans = torch.maximum(ans, st.to(ans.dtype))
        return ans

    def _get_scale_on_device(self, batch_size: int) -> Tensor:
        """get_scale with schedules as tensors and the skip masks always drawn (a zero rate keeps all)."""
        ans = limit_param_value(self.bypass_scale, min=value(self.scale_min), max=value(self.scale_max),
                                record=self.scale_limit_fired)
        skip_rate = value(self.skip_rate)
        if isinstance(skip_rate, Tensor) or skip_rate != 0.0:
            ans = ans * keep_mask((batch_size, 1), skip_rate, ans.device)
        straight_through_rate = value(self.straight_through_rate)
        if isinstance(straight_through_rate, Tensor) or straight_through_rate != 0.0:
            st = torch.rand((batch_size, 1), device=ans.device) < straight_through_rate
            ans = torch.maximum(ans, st.to(ans.dtype))
        return ans

    def forward(self, src_orig: Tensor, src: Tensor, norm: Optional[nn.Module] = None) -> Tensor:
        """src_orig + (src - src_orig) * c; with a BiasNorm `norm`, src is first normalised by it
        (bias_norm_bypass: the fused path then does not store the normalised tensor)."""
        if norm is None:
            return bypass(src_orig, src, self.get_scale(src.shape[1]))
        norm.check_input(src)
        log_scale = norm.limited_log_scale()  # drawn before the bypass scale, as norm(src) then bypass
        return bias_norm_bypass(src_orig, src, log_scale, norm.bias, self.get_scale(src.shape[1]))
