"""The dispatch rule every fused op follows: run the Triton kernel on these tensors, or the reference?

The inputs are the backend setting (zipformer_fast.runtime: "auto" | "triton" | "reference"),
whether triton imports, and where the tensors live. "auto" uses Triton for CUDA tensors and the
reference everywhere else, falling back quietly; "triton" asked for explicitly fails loudly when
triton is missing. CPU tensors reach the kernels only under TRITON_INTERPRET=1 (Triton's
interpreter: how tests run the kernels without a GPU). Inside a torch.func transform every op
takes the reference.
"""
from __future__ import annotations

import torch

from .runtime import get_backend, triton_available, triton_interpret


_functorch_active = torch._C._are_functorch_transforms_active


def use_triton_for(*tensors: torch.Tensor) -> bool:
    """True when the fused Triton path should run on these tensors under the current backend.
    Never inside a torch.func transform (vmap, grad, jacrev, ...): its wrapped tensors have no
    storage a kernel could read and the eager autograd.Functions define no vmap rule, while the
    reference ops compose with the transforms."""
    name = get_backend()
    if name == "reference":
        return False
    if not triton_available():
        if name == "triton":
            raise RuntimeError("backend 'triton' requested but triton is not importable: pip install triton")
        return False
    if _functorch_active():
        return False
    for t in tensors:  # a loop, not all(<generator>): ~0.4 us less per fused call
        if t is not None and not t.is_cuda:
            return triton_interpret()
    return True
