"""Checkpoints that resume a run exactly: model, float64 averaged model, optimizer, scheduler,
GradScaler, data position (epoch + batches consumed) and every rank's RNG state.

Files: <exp_dir>/checkpoint-<batch>.pt every N steps and epoch-<e>.pt at each epoch end, written
atomically (temp file + rename) so that a run killed mid-write never leaves a truncated
checkpoint that resume would pick up.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional, Union

import torch

_CKPT_RE = re.compile(r"^checkpoint-(\d+)\.pt$")
_EPOCH_RE = re.compile(r"^epoch-(\d+)\.pt$")


def save(path: Union[str, Path], state: dict) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load(path: Union[str, Path]) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    # Checkpoints hold Python objects (RNG states, args); they are our own files.
    return torch.load(path, map_location="cpu", weights_only=False)


def step_checkpoints(exp_dir: Union[str, Path]) -> List[Path]:
    """checkpoint-<b>.pt files, newest (largest b) first."""
    exp_dir = Path(exp_dir)
    found = [(int(m.group(1)), p) for p in exp_dir.glob("checkpoint-*.pt") if (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def epoch_checkpoint(exp_dir: Union[str, Path], epoch: int) -> Path:
    return Path(exp_dir) / f"epoch-{epoch}.pt"


def latest(exp_dir: Union[str, Path]) -> Optional[Path]:
    """The checkpoint with the most training steps (newest step file vs newest epoch file)."""
    exp_dir = Path(exp_dir)
    epochs = [(int(m.group(1)), p) for p in exp_dir.glob("epoch-*.pt") if (m := _EPOCH_RE.match(p.name))]
    cands = step_checkpoints(exp_dir)[:1] + [max(epochs)[1]] if epochs else step_checkpoints(exp_dir)[:1]
    if not cands:
        return None
    # An epoch file's name does not say how many steps it holds: compare batch_idx_train.
    # On a tie the epoch file wins (it is the later point: the epoch is complete).
    return max(cands, key=lambda p: (load(p)["params"]["batch_idx_train"], _EPOCH_RE.match(p.name) is not None))


def remove_old(exp_dir: Union[str, Path], keep_last: int) -> None:
    """Keep the newest `keep_last` step checkpoints (icefall's --keep-last-k)."""
    if keep_last <= 0:
        return
    for p in step_checkpoints(exp_dir)[keep_last:]:
        p.unlink(missing_ok=True)
