"""Convert ScaledAdam state dicts between icefall's layout and ours, so a run can move between
icefall's optimizer (egs/librispeech/ASR/zipformer/optim.py) and zipformer_fast's mid-training.

icefall's layout (BatchedOptimizer.batched_params): within each parameter group, parameters are
bucketed by (str(dtype), *shape), buckets sorted by that key; each bucket's state lives in the
state of its FIRST parameter, as stacked tensors with a leading bucket dim:
  step (int), exp_avg_sq / delta (fp32, (n, *shape)); non-scalars add param_rms and
  scale_exp_avg_sq (fp32, (n, 1, ..., 1)) and scale_grads (fp32, (period, n, 1, ..., 1));
the group's clipping state sits in the first bucket's state: model_norms (fp32 (period,)),
model_norm_threshold (Python float, once set) and num_clipped (Python int).
Ours (optim/reference.py): the same quantities per parameter (0-dim param_rms and
scale_exp_avg_sq, (period,) scale_grads), clipping state in the group's first parameter, as
tensors. param_groups (hyperparameters and per-group lr) are identical in both and pass through.

Covered: every state entry above, any number of groups, mixed dtypes, parameters without state
(never stepped). ScaledAdam.load_state_dict detects icefall's layout and converts on its own.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Dict, List, Sequence

import torch

_CLIP_KEYS = ("model_norms", "model_norm_threshold", "num_clipped")


def icefall_buckets(params: Sequence[torch.Tensor]) -> List[List[int]]:
    """Indices (within the group) of each bucket, in icefall's order."""
    by_key = defaultdict(list)
    for i, p in enumerate(params):
        by_key[(str(p.dtype), *p.shape)].append(i)
    return [by_key[k] for k in sorted(by_key)]


def _group_offsets(groups: Sequence[Sequence[torch.Tensor]]) -> List[int]:
    offsets, n = [], 0
    for g in groups:
        offsets.append(n)
        n += len(g)
    return offsets


def _check_groups(state_dict: dict, groups) -> None:
    saved = [len(g["params"]) for g in state_dict["param_groups"]]
    if saved != [len(g) for g in groups]:
        raise ValueError(f"state dict has groups of sizes {saved}, the optimizer {[len(g) for g in groups]}")


def is_icefall_layout(state_dict: dict, groups: Sequence[Sequence[torch.Tensor]]) -> bool:
    """True when the state tensors carry icefall's leading bucket dim."""
    params = [p for g in groups for p in g]
    for idx, st in state_dict["state"].items():
        if "exp_avg_sq" in st and int(idx) < len(params):
            return st["exp_avg_sq"].ndim == params[int(idx)].ndim + 1
    return False


def _state_ids(state_dict: dict):
    """Saved parameter ids per group (torch numbers them 0..n-1 in group order)."""
    return [list(g["params"]) for g in state_dict["param_groups"]]


def scaled_adam_state_from_icefall(state_dict: dict, groups: Sequence[Sequence[torch.Tensor]]) -> dict:
    """icefall ScaledAdam.state_dict() -> zipformer_fast ScaledAdam layout. `groups`: the parameters
    of each group of the optimizer that will load it (for their shapes and dtypes), e.g.
    `[g["params"] for g in optimizer.param_groups]`."""
    _check_groups(state_dict, groups)
    out_state: Dict[int, dict] = {}
    for group_params, ids in zip(groups, _state_ids(state_dict)):
        for bucket in icefall_buckets(group_params):
            st = state_dict["state"].get(ids[bucket[0]])
            if not st:
                continue
            for j, i in enumerate(bucket):
                p = group_params[i]
                new = {"step": int(st["step"]),
                       "exp_avg_sq": st["exp_avg_sq"][j].to(torch.float32).clone(),
                       "delta": st["delta"][j].to(torch.float32).clone()}
                if p.numel() > 1:
                    new["param_rms"] = st["param_rms"][j].reshape(()).to(torch.float32).clone()
                    new["scale_exp_avg_sq"] = st["scale_exp_avg_sq"][j].reshape(()).to(torch.float32).clone()
                    new["scale_grads"] = st["scale_grads"][:, j].reshape(-1).to(torch.float32).clone()
                out_state[ids[i]] = new
        first_bucket = icefall_buckets(group_params)[0] if group_params else []
        clip = state_dict["state"].get(ids[first_bucket[0]], {}) if first_bucket else {}
        if any(k in clip for k in _CLIP_KEYS) and ids[0] in out_state:
            dst = out_state[ids[0]]
            if "model_norms" in clip:
                dst["model_norms"] = torch.as_tensor(clip["model_norms"], dtype=torch.float32).clone()
            if "model_norm_threshold" in clip:
                dst["model_norm_threshold"] = torch.tensor(float(clip["model_norm_threshold"]), dtype=torch.float32)
            if "num_clipped" in clip:
                dst["num_clipped"] = torch.tensor(int(clip["num_clipped"]), dtype=torch.int64)
    return {"state": out_state, "param_groups": copy.deepcopy(state_dict["param_groups"])}


def scaled_adam_state_to_icefall(state_dict: dict, groups: Sequence[Sequence[torch.Tensor]]) -> dict:
    """zipformer_fast ScaledAdam.state_dict() -> icefall ScaledAdam layout (see from_icefall)."""
    _check_groups(state_dict, groups)
    out_state: Dict[int, dict] = {}
    for group_params, ids in zip(groups, _state_ids(state_dict)):
        buckets = icefall_buckets(group_params)
        for bucket in buckets:
            states = [state_dict["state"].get(ids[i]) for i in bucket]
            if not any(states):
                continue
            if not all(states):
                raise ValueError(f"parameters {[ids[i] for i in bucket]} share an icefall bucket but only "
                                 f"some have optimizer state")
            steps = {int(s["step"]) for s in states}
            if len(steps) != 1:
                raise ValueError(f"parameters {[ids[i] for i in bucket]} share an icefall bucket but are at "
                                 f"different steps {sorted(steps)}")
            p = group_params[bucket[0]]
            ones = (1,) * p.ndim
            new = {"step": steps.pop(),
                   "exp_avg_sq": torch.stack([s["exp_avg_sq"].to(torch.float32) for s in states]),
                   "delta": torch.stack([s["delta"].to(torch.float32) for s in states])}
            if p.numel() > 1:
                n = len(states)
                new["param_rms"] = torch.stack([s["param_rms"].reshape(()) for s in states]).reshape(n, *ones)
                new["scale_exp_avg_sq"] = torch.stack([s["scale_exp_avg_sq"].reshape(())
                                                       for s in states]).reshape(n, *ones)
                new["scale_grads"] = torch.stack([s["scale_grads"].reshape(-1) for s in states],
                                                 dim=1).reshape(-1, n, *ones)
            out_state[ids[bucket[0]]] = new
        clip = state_dict["state"].get(ids[0], {}) if group_params else {}
        if any(k in clip for k in _CLIP_KEYS) and buckets and ids[buckets[0][0]] in out_state:
            dst = out_state[ids[buckets[0][0]]]
            if "model_norms" in clip:
                dst["model_norms"] = clip["model_norms"].to(torch.float32).clone()
            if "model_norm_threshold" in clip:
                dst["model_norm_threshold"] = float(clip["model_norm_threshold"])
            if "num_clipped" in clip:
                dst["num_clipped"] = int(clip["num_clipped"])
    return {"state": out_state, "param_groups": copy.deepcopy(state_dict["param_groups"])}
