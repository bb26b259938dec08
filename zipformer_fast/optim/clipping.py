"""Gradient clipping factor for the fast paths, on the device and without host syncs except at
threshold recomputes (steps 10/20/40 and every clipping_update_period steps), which sort the
ring buffer of recent norms on the host as icefall does.

gamma = min(1, threshold / (norm + 1e-20)), NaN -> 0 (icefall ScaledAdam._get_clipping_scale; the caller then treats
gamma == 0 as "zero the gradients"). None means gamma == 1 exactly (no threshold yet, clipping
off, or the group's first step), so callers can skip the multiply.
"""
from __future__ import annotations

from typing import Optional

import torch

from .reference import recompute_threshold, should_recompute


def clipping_factor(group: dict, clip_state: dict, tot_sumsq: torch.Tensor, step: int,
                    first_step: bool) -> Optional[torch.Tensor]:
    """tot_sumsq: 0-dim tensor, sum over tensors of w * sum(g^2) with w = param_rms^2 (old rms)
    or scalar_lr_scale^2. Updates clip_state (model_norms, threshold, num_clipped) in place."""
    clipping_scale = group["clipping_scale"]
    if first_step or clipping_scale is None or step == 0:
        return None
    period = group["clipping_update_period"]
    tot_norm = tot_sumsq.to(torch.float32).sqrt()
    if "model_norms" not in clip_state:
        clip_state["model_norms"] = torch.zeros(period, dtype=torch.float32, device=tot_norm.device)
    clip_state["model_norms"][step % period].copy_(tot_norm)  # no sync: device-side write
    if should_recompute(step, period):
        recompute_threshold(clip_state, step, clipping_scale, period)
    thr = clip_state.get("model_norm_threshold")
    if thr is None:
        return None
    ans = (thr / (tot_norm + 1.0e-20)).clamp(max=1.0)
    ans = torch.where(torch.isnan(ans), torch.zeros_like(ans), ans)
    clip_state["num_clipped"] += (ans < 1.0).to(torch.int64)
    return ans
