"""Token targets in the two forms the losses accept: a list of id lists, or a padded (B, S)
integer tensor with lengths. `pad_targets` turns either into (padded int64 (B, S), lens int64 (B,))
on a given device; `flat_targets` gives the concatenated ids CTC wants."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

Targets = Union[Sequence[Sequence[int]], Tensor]


def pad_targets(targets: Targets, target_lens: Optional[Tensor] = None, pad: int = 0,
                device: Union[str, torch.device, None] = None) -> Tuple[Tensor, Tensor]:
    """-> (padded (B, S) int64 with `pad` after each length, lens (B,) int64)."""
    if isinstance(targets, Tensor):
        if targets.ndim != 2 or targets.is_floating_point():
            raise ValueError(f"padded targets must be a 2-D integer tensor, got {targets.dtype} "
                             f"{tuple(targets.shape)}")
        if target_lens is None:
            raise ValueError("padded targets need target_lens")
        device = targets.device if device is None else device
        lens = target_lens.to(device=device, dtype=torch.int64)
        if lens.shape != (targets.shape[0],) or bool((lens < 0).any()) or \
                bool((lens > targets.shape[1]).any()):
            raise ValueError(f"target_lens {lens.tolist()} do not fit targets of shape "
                             f"{tuple(targets.shape)}")
        padded = targets.to(device=device, dtype=torch.int64)
        keep = torch.arange(padded.shape[1], device=device).unsqueeze(0) < lens.unsqueeze(1)
        return padded.masked_fill(~keep, pad), lens
    if target_lens is not None:
        raise ValueError("target_lens is only used with padded tensor targets")
    seqs = [list(map(int, y)) for y in targets]
    lens = torch.tensor([len(y) for y in seqs], dtype=torch.int64)
    padded = torch.full((len(seqs), int(lens.max()) if seqs else 0), pad, dtype=torch.int64)
    for b, y in enumerate(seqs):
        padded[b, :len(y)] = torch.tensor(y, dtype=torch.int64)
    return padded.to(device), lens.to(device)


def flat_targets(padded: Tensor, lens: Tensor) -> Tensor:
    """Concatenation of padded[b, :lens[b]] over b (1-D int64)."""
    keep = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < lens.unsqueeze(1)
    return padded[keep]
