"""Which implementation of the fused ops runs: "reference" (pure PyTorch), "triton" or "auto".

The choice is global (env ZIPFORMER_FAST_BACKEND, default "auto") and can be overridden for a block
with `use_backend(...)`. "auto" uses Triton kernels for CUDA tensors when triton imports, and the
reference everywhere else; it falls back quietly. "triton" asked for explicitly fails loudly when
triton is missing. On CPU tensors the Triton kernels run only under TRITON_INTERPRET=1 (the
interpreter: how tests exercise the kernels on a machine without a GPU).
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading

import torch

BACKENDS = ("auto", "triton", "reference")

_state = threading.local()


def _env_backend() -> str:
    name = os.environ.get("ZIPFORMER_FAST_BACKEND", "auto").strip().lower()
    if name not in BACKENDS:
        raise ValueError(f"ZIPFORMER_FAST_BACKEND={name!r}: expected one of {BACKENDS}")
    return name


def get_backend() -> str:
    """The backend requested now: the innermost `use_backend`, else the environment variable."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else _env_backend()


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed code with backend `name` ("auto" | "triton" | "reference")."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: expected one of {BACKENDS}")
    if name == "triton" and not triton_available():
        raise RuntimeError("backend 'triton' requested but triton is not importable: pip install triton")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:
        return False
    return True


def use_triton_for(*tensors: torch.Tensor) -> bool:
    """True when the fused Triton path should run on these tensors under the current backend."""
    name = get_backend()
    if name == "reference":
        return False
    if not triton_available():
        if name == "triton":
            raise RuntimeError("backend 'triton' requested but triton is not importable: pip install triton")
        return False
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if on_cuda:
        return True
    # CPU tensors: only the interpreter can run kernels on them.
    return interpreter_enabled()
