"""Model averaging as icefall does it (icefall/checkpoint.py update_averaged_model and
average_checkpoints_with_averaged_model at icefall 36e0420).

During training rank 0 keeps `model_avg`, a float64 copy updated every `average_period` steps with
model_avg <- model_avg * (1 - period/b) + model * (period/b): the running mean of the snapshots at
b = period, 2*period, ... Two checkpoints' running means give the mean over the steps in between:
avg = (avg_end * n_end - avg_start * n_start) / (n_end - n_start), n = batch_idx_train rounded down
to a multiple of the period.
"""
from __future__ import annotations

from typing import Dict, List

import torch


def _float_keys(sd: Dict[str, torch.Tensor]):
    return [k for k, v in sd.items() if torch.is_floating_point(v)]


def make_averaged_copy(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """A float64 copy of the model's state dict (integer buffers kept as they are)."""
    return {k: (v.detach().to("cpu", torch.float64).clone() if torch.is_floating_point(v) else v.detach().cpu().clone())
            for k, v in model.state_dict().items()}


@torch.no_grad()
def update_averaged_model(model_avg: Dict[str, torch.Tensor], model: torch.nn.Module,
                          batch_idx_train: int, average_period: int) -> None:
    """In place: model_avg = model_avg * (1 - w) + model * w with w = average_period / batch_idx_train."""
    if batch_idx_train <= 0 or batch_idx_train % average_period != 0:
        raise ValueError(f"update at batch {batch_idx_train}: must be a positive multiple of {average_period}")
    w = average_period / batch_idx_train
    cur = model.state_dict()
    for k in _float_keys(model_avg):
        model_avg[k].mul_(1.0 - w).add_(cur[k].detach().to("cpu", torch.float64), alpha=w)
    for k, v in cur.items():
        if k in model_avg and not torch.is_floating_point(model_avg[k]):
            model_avg[k] = v.detach().cpu().clone()


def average_between(ckpt_start: dict, ckpt_end: dict) -> Dict[str, torch.Tensor]:
    """Mean of the model snapshots taken after ckpt_start's step up to ckpt_end's step (icefall's
    average_checkpoints_with_averaged_model). ckpt_start may be None: the mean since step 0."""
    period = ckpt_end["params"]["average_period"]
    n_end = ckpt_end["params"]["batch_idx_train"] // period * period
    n_start = 0 if ckpt_start is None else ckpt_start["params"]["batch_idx_train"] // period * period
    if ckpt_end.get("model_avg") is None:
        raise ValueError("checkpoint has no averaged model (was it saved by rank 0 of recipes/train.py?)")
    if n_end <= n_start:
        raise ValueError(f"nothing to average: start step {n_start} >= end step {n_end} (period {period})")
    end = ckpt_end["model_avg"]
    if n_start == 0:
        return {k: v.clone() for k, v in end.items()}
    start = ckpt_start["model_avg"]
    out = {}
    for k, v in end.items():
        if torch.is_floating_point(v):
            out[k] = (v * n_end - start[k] * n_start) / (n_end - n_start)
        else:
            out[k] = v.clone()
    return out


def average_state_dicts(state_dicts: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Plain mean of several checkpoints' models (icefall's average_checkpoints), in float64."""
    if not state_dicts:
        raise ValueError("no checkpoints to average")
    out = {}
    for k, v in state_dicts[0].items():
        if torch.is_floating_point(v):
            out[k] = sum(sd[k].to(torch.float64) for sd in state_dicts) / len(state_dicts)
        else:
            out[k] = v.clone()
    return out
