"""Memory a benchmarked call needs: its peak (CUDA allocator, or live tensor storages on a CPU)
and the bytes autograd saves for backward.

`peak_memory_mb`: on CUDA, torch.cuda.max_memory_allocated() after reset_peak_memory_stats(), so
it includes what was allocated before the call (weights, inputs), plus the part above that. On a
CPU, where torch has no such counter, `PeakTensorMemory` (a TorchDispatchMode that sees every
tensor an aten op returns) counts each storage once (keyed by its data pointer), holds a count of
the live Python tensors pointing into it (views share storage) and subtracts its bytes when the
last one is collected; the peak of that running sum is the CPU figure. It misses scratch memory an
op allocates and frees internally (e.g. inside a oneDNN convolution) and allocator rounding, so it
is a lower bound; the caller adds the bytes of its weights and inputs (`resident_bytes`) so that
it reads like the GPU's figure.

`saved_for_backward`: every tensor autograd saves (torch.autograd.graph.saved_tensors_hooks)
counted once per storage (a saved view keeps its whole storage alive), the caller's tensors
(weights, inputs) excluded. Storages are keyed by their StorageImpl, so fake and meta tensors count
too: a device-independent measure of activation memory. It sees ctx.save_for_backward, not tensors
a custom Function keeps as plain ctx attributes.
"""
from __future__ import annotations

import contextlib
import gc
import weakref
from typing import Callable, Iterable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from bench.harness import MiB, synchronize


class PeakTensorMemory(TorchDispatchMode):
    """with PeakTensorMemory() as m: ... -> m.peak, m.current: bytes of storages created in the block."""

    def __init__(self):
        super().__init__()
        self.current = 0
        self.peak = 0
        self._refs = {}      # data_ptr -> [live tensor objects, nbytes]

    def _release(self, key: int) -> None:
        entry = self._refs.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self.current -= entry[1]
            del self._refs[key]

    def _track(self, t: torch.Tensor, input_storages: set) -> None:
        if t.device.type == "meta":
            return
        storage = t.untyped_storage()
        key, nbytes = storage.data_ptr(), storage.nbytes()
        entry = self._refs.get(key)
        if entry is None:
            if nbytes == 0 or key in input_storages:
                return  # a view of (or in-place write into) memory that existed before the block
            entry = self._refs[key] = [0, nbytes]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor) and a.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t, inputs)
        return out


def peak_memory_mb(fn: Callable[[], object], device, resident_bytes: int = 0):
    """(peak MB, peak MB above what was allocated before) of one call of fn. On a CPU the first is
    `resident_bytes` plus the second (see the module docstring)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak / MiB, (peak - before) / MiB
    with PeakTensorMemory() as tracker:
        fn()
    return (resident_bytes + tracker.peak) / MiB, tracker.peak / MiB


def storage_key(t: torch.Tensor) -> int:
    """Identifies a tensor's storage, also for fake and meta tensors (whose data_ptr is 0)."""
    return t.untyped_storage()._cdata


class SavedBytes:
    """What saved_for_backward counted: `bytes` and `tensors` (distinct storages)."""

    def __init__(self):
        self.storages = {}

    @property
    def bytes(self) -> int:
        return int(sum(nbytes for nbytes, _ in self.storages.values()))

    @property
    def tensors(self) -> int:
        return len(self.storages)


@contextlib.contextmanager
def saved_for_backward(exclude: Iterable[torch.Tensor] = (), observe: Optional[Callable] = None):
    """with saved_for_backward(exclude=weights_and_inputs) as saved: <forward> -> saved.bytes.
    observe(tensor, storage_key), if given, is called for every counted tensor each time it is
    saved (bench/saved_bytes_breakdown.py uses it to say who saved what)."""
    excluded = {storage_key(t) for t in exclude}
    saved = SavedBytes()

    def pack(t):
        key = storage_key(t)
        if key not in excluded:
            # The tensor is kept: a freed storage's address could be reused and miscounted.
            saved.storages[key] = (t.untyped_storage().nbytes(), t)
            if observe is not None:
                observe(t, key)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved
