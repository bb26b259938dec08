"""A two-axis k2.RaggedTensor and k2.ragged.cat: only what icefall's Zipformer training path uses
for its token targets (train.py `k2.RaggedTensor(list_of_lists)`; model.py `num_axes`, `dim0`,
`shape.row_splits(1)`, `pad`, `values`, `tolist`, `to`; icefall.utils add_sos/add_eos via
`tot_size`, `dtype`, `device`, `k2.RaggedTensor(2-D tensor)` and `k2.ragged.cat(axis=0|1)`).
Values are int32 by default as in k2. Anything with more axes raises ValueError.
"""
from __future__ import annotations

from typing import List, Sequence, Union

import torch
from torch import Tensor


class RaggedShape:
    def __init__(self, row_splits: Tensor):
        self._row_splits = row_splits

    def row_splits(self, axis: int) -> Tensor:
        if axis != 1:
            raise ValueError(f"row_splits({axis}): this RaggedTensor has two axes (only axis 1)")
        return self._row_splits

    def tot_size(self, axis: int) -> int:
        return int(self._row_splits.numel() - 1) if axis == 0 else int(self._row_splits[-1])


class RaggedTensor:
    """RaggedTensor(list of lists | 2-D tensor (one row per sublist), dtype=int32, device=cpu)."""

    def __init__(self, data: Union[Sequence[Sequence[int]], Tensor], dtype=None, device=None):
        if isinstance(data, Tensor):
            if data.ndim != 2:
                raise ValueError(f"RaggedTensor from a tensor needs 2 dims, got {tuple(data.shape)}")
            values = data.reshape(-1)
            lens = [data.shape[1]] * data.shape[0]
            dtype = data.dtype if dtype is None else dtype
            device = data.device if device is None else device
        else:
            rows = [list(r) for r in data]
            if any(isinstance(v, (list, tuple)) for r in rows for v in r):
                raise ValueError("this k2.RaggedTensor stand-in supports two axes only")
            values = torch.tensor([v for r in rows for v in r], dtype=dtype or torch.int32)
            lens = [len(r) for r in rows]
            dtype = dtype or torch.int32
        device = torch.device("cpu") if device is None else torch.device(device)
        self.values = values.to(device=device, dtype=dtype)
        splits = torch.zeros(len(lens) + 1, dtype=torch.int32)
        splits[1:] = torch.tensor(lens, dtype=torch.int32).cumsum(0) if lens else splits[1:]
        self.shape = RaggedShape(splits.to(device))

    @classmethod
    def _from_parts(cls, values: Tensor, row_splits: Tensor) -> "RaggedTensor":
        obj = cls.__new__(cls)
        obj.values, obj.shape = values, RaggedShape(row_splits)
        return obj

    num_axes = 2

    @property
    def dim0(self) -> int:
        return self.shape.tot_size(0)

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def device(self) -> torch.device:
        return self.values.device

    def tot_size(self, axis: int) -> int:
        return self.shape.tot_size(axis)

    def to(self, device=None, dtype=None) -> "RaggedTensor":
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return RaggedTensor._from_parts(self.values.to(device=device, dtype=dtype),
                                        self.shape.row_splits(1).to(device=device))

    def tolist(self) -> List[List[int]]:
        splits = self.shape.row_splits(1).tolist()
        values = self.values.tolist()
        return [values[a:b] for a, b in zip(splits[:-1], splits[1:])]

    def pad(self, mode: str = "constant", padding_value=0) -> Tensor:
        """(dim0, longest sublist) tensor, right-padded with padding_value."""
        if mode != "constant":
            raise ValueError(f"pad(mode={mode!r}): only 'constant' is supported")
        splits = self.shape.row_splits(1).long()
        lens = splits[1:] - splits[:-1]
        width = int(lens.max()) if lens.numel() else 0
        out = torch.full((self.dim0, width), padding_value, dtype=self.dtype, device=self.device)
        col = torch.arange(self.values.numel(), device=self.device) - torch.repeat_interleave(splits[:-1], lens)
        out[torch.repeat_interleave(torch.arange(self.dim0, device=self.device), lens), col] = self.values
        return out

    def __repr__(self) -> str:
        return "[ " + " ".join("[ " + " ".join(map(str, r)) + " ]" for r in self.tolist()) + " ]"


def cat(srcs: Sequence[RaggedTensor], axis: int = 0) -> RaggedTensor:
    """axis=0: the sublists of all inputs, in order; axis=1: sublist i of every input joined."""
    if axis == 0:
        return RaggedTensor([r for s in srcs for r in s.tolist()], dtype=srcs[0].dtype, device=srcs[0].device)
    if axis == 1:
        rows = [s.tolist() for s in srcs]
        if len({len(r) for r in rows}) != 1:
            raise ValueError(f"ragged.cat(axis=1) needs the same dim0, got {[len(r) for r in rows]}")
        return RaggedTensor([sum(parts, []) for parts in zip(*rows)], dtype=srcs[0].dtype, device=srcs[0].device)
    raise ValueError(f"ragged.cat(axis={axis}): two-axis tensors have axes 0 and 1")
