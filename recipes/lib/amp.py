"""Mixed precision as icefall: fp16 = autocast + GradScaler (init scale 1.0, with icefall's periodic
forced growth while the scale is small); bf16 = autocast alone (its range needs no scaling)."""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def autocast(device: torch.device, dtype: str):
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def make_scaler(device: torch.device, dtype: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, init_scale=1.0, enabled=(dtype == "fp16"))


def maybe_grow_scale(scaler: torch.amp.GradScaler, batch_idx: int) -> None:
    """icefall: a small scale is doubled every 25 batches (< 2), 100 (< 8) or 400 (< 32), because the
    scaler's own growth (every 2000 good steps) is too slow to recover from early overflows."""
    if not scaler.is_enabled():
        return
    s = scaler.get_scale()
    if (batch_idx % 25 == 0 and s < 2.0) or (batch_idx % 100 == 0 and s < 8.0) or \
            (batch_idx % 400 == 0 and s < 32.0):
        scaler.update(s * 2.0)
    if scaler.get_scale() < 1e-5:
        raise RuntimeError(f"grad scale {scaler.get_scale()} collapsed at batch {batch_idx}: "
                           "training diverged in fp16 (try --dtype bf16 or a lower --base-lr)")
