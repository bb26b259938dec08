"""Python-side state of a model's modules that state_dict() does not hold, for exact resume.

Zipformer modules keep a few plain attributes that change during training: Whiten's current
`prob` (switched between its min and max after every backward), the schedules' `batch_count`,
Balancer's cutoff estimator counters. A resumed run that reset them would draw different random
decisions than the uninterrupted run. This snapshots every module's scalar attributes (int, float,
bool, str, None) and plain helper objects made only of scalars, and restores them by module name.
Tensors that are not buffers (e.g. a positional-encoding cache) are recomputed, not saved.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

_SCALARS = (int, float, bool, str, type(None))


def _plain_scalar_object(v) -> bool:
    d = getattr(v, "__dict__", None)
    return (d is not None and not isinstance(v, (nn.Module, torch.Tensor, type)) and not callable(v)
            and all(isinstance(x, _SCALARS) for x in d.values()))


def get_module_state(model: nn.Module) -> dict:
    state = {}
    for name, module in model.named_modules():
        attrs = {}
        for k, v in vars(module).items():
            if k.startswith("_") or k == "training":
                continue
            if isinstance(v, _SCALARS):
                attrs[k] = v
            elif _plain_scalar_object(v):
                attrs[k] = ("__object__", copy.deepcopy(vars(v)))
        if attrs:
            state[name] = attrs
    return state


def set_module_state(model: nn.Module, state: dict) -> None:
    modules = dict(model.named_modules())
    for name, attrs in state.items():
        if name not in modules:
            raise KeyError(f"module {name!r} of the checkpoint's module state is not in the model")
        module = modules[name]
        for k, v in attrs.items():
            if isinstance(v, tuple) and len(v) == 2 and v[0] == "__object__":
                vars(getattr(module, k)).update(copy.deepcopy(v[1]))
            else:
                setattr(module, k, v)
