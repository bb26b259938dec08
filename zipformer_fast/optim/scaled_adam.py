"""ScaledAdam (the semantics of icefall egs/librispeech/ASR/zipformer/optim.py ScaledAdam at icefall 36e0420) with per-parameter state and
three interchangeable step implementations:

  "extension"  compiled multi-tensor step (csrc/): 2 passes over the data per group and step;
  "foreach"    torch._foreach_* ops (fallback when the extension cannot be built/loaded);
  "reference"  plain per-parameter loop written from the spec (reference.py);
  "auto"       extension where it loads, else foreach with a one-time warning.

icefall stacks same-shape parameters into buckets and copies them back; here every parameter
keeps its own state, which gives the same per-parameter results (the global clipping norm is
only summed in a different order). The state layout is documented in reference.py; all
implementations share it, so a state_dict saved with one resumes with another.

GradScaler: `scaler.step(opt)` unscales the gradients and skips `opt.step()` entirely when they
hold inf/NaN, so a skipped step leaves the state untouched. `_step_supports_amp_scaling` is not
claimed (GradScaler then handles the skip itself).
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Tuple

import torch
from torch.optim import Optimizer

from .extension import extension_group_step, extension_supports, load_extension
from .foreach_impl import foreach_group_step
from .icefall_state import is_icefall_layout, scaled_adam_state_from_icefall, scaled_adam_state_to_icefall
from .reference import init_param_state, reference_group_step

IMPLEMENTATIONS = ("auto", "extension", "foreach", "reference")
_warned = set()


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, stacklevel=3)


def split_named_params(params) -> Tuple[List[Dict], List[List[str]], bool]:
    """icefall's 4 input forms: params, param groups, (name, param) pairs, groups with
    "named_params". Returns (param_groups, names per group, whether real names were given)."""
    items = list(params)
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    groups, names, named = [], [], True
    if not isinstance(items[0], dict):
        ps, ns = [], []
        for x in items:
            if isinstance(x, tuple):
                if len(x) != 2 or not isinstance(x[1], torch.Tensor):
                    raise TypeError("expected (name, parameter) pairs")
                ns.append(x[0])
                ps.append(x[1])
            elif isinstance(x, torch.Tensor):
                ns.append("foo")
                ps.append(x)
                named = False
            else:
                raise TypeError(f"expected tensors or (name, tensor) pairs, got {type(x).__name__}")
        groups.append({"params": ps})
        names.append(ns)
    else:
        for g in items:
            g = dict(g)
            if "named_params" in g:
                pairs = list(g.pop("named_params"))
                g["params"] = [p for _, p in pairs]
                names.append([n for n, _ in pairs])
            elif "params" in g:
                g["params"] = list(g["params"]) if not isinstance(g["params"], torch.Tensor) else [g["params"]]
                names.append(["foo"] * len(g["params"]))
                named = False
            else:
                raise ValueError("a parameter group needs 'params' or 'named_params'")
            groups.append(g)
    return groups, names, named


class ScaledAdam(Optimizer):
    """icefall's ScaledAdam. Arguments and defaults as icefall's, plus
    implementation = "auto" | "extension" | "foreach" | "reference"."""

    def __init__(self, params, lr=3e-02, clipping_scale=None, betas=(0.9, 0.98),
                 scalar_lr_scale=0.1, eps=1.0e-08, param_min_rms=1.0e-05, param_max_rms=3.0,
                 scalar_max=10.0, size_update_period=4, clipping_update_period=100,
                 implementation: str = "auto"):
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation={implementation!r}: expected one of {IMPLEMENTATIONS}")
        if not lr >= 0.0:
            raise ValueError(f"invalid lr {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"invalid betas {betas}")
        if clipping_scale is not None and not clipping_scale > 0:
            raise ValueError(f"invalid clipping_scale {clipping_scale}")
        if not (0 < param_min_rms < param_max_rms):
            raise ValueError("need 0 < param_min_rms < param_max_rms")
        if int(size_update_period) < 1 or int(clipping_update_period) < 1:
            raise ValueError("size_update_period and clipping_update_period must be >= 1")
        defaults = dict(lr=lr, clipping_scale=clipping_scale, betas=tuple(betas),
                        scalar_lr_scale=scalar_lr_scale, eps=eps, param_min_rms=param_min_rms,
                        param_max_rms=param_max_rms, scalar_max=scalar_max,
                        size_update_period=int(size_update_period),
                        clipping_update_period=int(clipping_update_period))
        groups, names, named = split_named_params(params)
        self.show_dominant_parameters = named
        super().__init__(groups, defaults)
        self.parameters_names = names
        self.implementation = implementation

    def add_param_group(self, param_group: dict) -> None:
        if "named_params" in param_group:
            param_group = dict(param_group)
            pairs = list(param_group.pop("named_params"))
            param_group["params"] = [p for _, p in pairs]
            group_names = [n for n, _ in pairs]
        else:
            group_names = None
        super().add_param_group(param_group)
        if hasattr(self, "parameters_names"):  # not during __init__ (names set after)
            n = len(self.param_groups[-1]["params"])
            self.parameters_names.append(group_names or ["foo"] * n)

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but state tensors keep their saved dtype (fp32 moments of fp16/bf16
        params): torch would cast them to the param dtype, losing precision on resume.
        A state dict saved by icefall's ScaledAdam (stacked per-shape buckets) is recognised and
        converted (optim/icefall_state.py)."""
        groups = [g["params"] for g in self.param_groups]
        if is_icefall_layout(state_dict, groups):
            state_dict = scaled_adam_state_from_icefall(state_dict, groups)
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        params = [p for g in self.param_groups for p in g["params"]]
        for pid, p in zip(saved_ids, params):
            for k, v in state_dict["state"].get(pid, {}).items():
                if isinstance(v, torch.Tensor):
                    self.state[p][k] = v.to(device=p.device, copy=True)

    def icefall_state_dict(self) -> dict:
        """This optimizer's state in icefall ScaledAdam's layout (load it into icefall's optimizer
        built over the same parameter groups)."""
        return scaled_adam_state_to_icefall(self.state_dict(), [g["params"] for g in self.param_groups])

    def _impl_for(self, group) -> Tuple[str, object]:
        params = group["params"]
        if self.implementation in ("foreach", "reference"):
            return self.implementation, None
        why = extension_supports(params)
        ext = None
        if why is None:
            ext, why = load_extension(params[0].device.type)
            why = why or None
        if ext is not None:
            return "extension", ext
        if self.implementation == "extension":
            raise RuntimeError(f"ScaledAdam: the compiled extension is unavailable: {why}")
        _warn_once(f"zipformer_fast ScaledAdam: compiled extension unavailable ({why}); "
                   "using the torch._foreach implementation")
        return "foreach", None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            for p in params:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError("ScaledAdam does not support sparse gradients")
            states = [self.state[p] for p in params]
            first_step = len(states[0]) == 0 or "step" not in states[0]
            for p, st in zip(params, states):
                if "step" not in st:
                    init_param_state(p, st, group["size_update_period"])
            # icefall stacks a missing gradient as zeros: the parameter still moves by momentum
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            name, ext = self._impl_for(group)
            clip_state = states[0]
            if name == "extension":
                extension_group_step(ext, group, params, grads, states, clip_state, first_step)
            elif name == "foreach":
                foreach_group_step(group, params, grads, states, clip_state, first_step)
            else:
                reference_group_step(group, params, grads, states, clip_state, first_step)
        return loss
