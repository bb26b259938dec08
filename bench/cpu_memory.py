"""Peak tensor memory of a block of code on CPU, where torch has no `max_memory_allocated`.

`PeakTensorMemory` is a TorchDispatchMode that sees every tensor an aten op returns. It counts
each storage once (keyed by its data pointer), holds a reference count of the live Python tensor
objects that point into it (views share storage), and subtracts the storage's bytes when the last
one is collected. The peak of that running sum is the figure reported.

What it measures: bytes of tensor storages created inside the block and alive at the same time
(activations, workspace returned by ops), the CPU analogue of max_memory_allocated() minus the
memory allocated before the block. What it misses: scratch memory an op allocates and frees
internally (e.g. inside a oneDNN convolution) and allocator rounding/caching, so it is a lower
bound on the process's extra memory. The benchmarks add the bytes of the weights and inputs to it
so that it reads like the GPU's max_memory_allocated().
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakTensorMemory(TorchDispatchMode):
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
