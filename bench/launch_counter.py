"""Counting kernel launches: aten ops that launch work (a TorchDispatchMode) and Triton launches
(a counter around the launch of every @triton.jit kernel: JITFunction.run on a GPU, the
interpreter's InterpretedFunction.run under TRITON_INTERPRET=1). Used by bench/launch_count.py
(per model step) and bench/kernels.py (per op call).

Not counted as aten launches: views and metadata (OpOverload.is_view, detach, sym sizes),
allocations (empty*, new_empty*), and ops run inside a Triton launch (the interpreter copies a
kernel's arguments with aten ops; a GPU launch does not). Under any TorchDispatchMode the fused ops run as their
torch.library custom ops (zipformer_fast.ops._registry.tracing), which the mode sees as one
`zipformer_fast::` op each: recorded separately, their kernels counted as Triton launches.
"""
import collections
import contextlib

from torch.utils._python_dispatch import TorchDispatchMode

_NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "lift_fresh",
              "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "_unsafe_view", "alias", "set_"}


class CountOps(TorchDispatchMode):
    """aten ops that launch work, by name (`custom` holds the custom-op calls seen)."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()
        self.custom = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if _IN_LAUNCH[0]:  # the interpreter's own copies of a kernel's arguments: no GPU launch
            pass
        elif func.namespace != "aten":
            self.custom[f"{func.namespace}::{name}"] += 1
        elif not func.is_view and name not in _NO_LAUNCH:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


_TRITON = collections.Counter()
_INSTALLED = []
_IN_LAUNCH = [0]


def install_triton_counter() -> collections.Counter:
    """Wrap the Triton launch once (idempotent); returns the live kernel-name -> launches counter."""
    if _INSTALLED:
        return _TRITON
    import os

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        from triton.runtime.interpreter import InterpretedFunction as cls
    else:
        from triton.runtime.jit import JITFunction as cls
    original = cls.run

    def run(fn_self, *args, grid, warmup, **kwargs):
        if not warmup:
            _TRITON[fn_self.fn.__name__ if hasattr(fn_self.fn, "__name__") else str(fn_self)] += 1
        _IN_LAUNCH[0] += 1
        try:
            return original(fn_self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            _IN_LAUNCH[0] -= 1

    cls.run = run
    _INSTALLED.append(cls)
    return _TRITON


@contextlib.contextmanager
def counting():
    """with counting() as c: ... -> c["aten"] (Counter), c["triton"] (Counter), c["custom"]."""
    triton_counts = install_triton_counter()
    before = collections.Counter(triton_counts)
    mode = CountOps()
    result = {}
    with mode:
        yield result
    result["aten"] = mode.counts
    result["custom"] = mode.custom
    result["triton"] = collections.Counter({k: v - before.get(k, 0) for k, v in triton_counts.items()
                                            if v - before.get(k, 0) > 0})
