"""CTC loss for the CTC head (icefall: torch ctc_loss on (T, B, V) log-probs, blank 0,
reduction "sum"). Runs in fp32 with autocast off; targets as id lists or padded + lengths."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .targets import Targets, flat_targets, pad_targets


def ctc_loss(log_probs: Tensor, log_probs_lens: Tensor, targets: Targets,
             target_lens: Optional[Tensor] = None, blank: int = 0, reduction: str = "sum",
             zero_infinity: bool = False) -> Tensor:
    """log_probs: (B, T, V) log-softmax output (e.g. model.ctc_output(encoder_out)); lens (B,).

    An utterance with more targets (plus needed repeats) than frames has infinite loss; pass
    zero_infinity=True to zero it (and its gradient) instead."""
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (B, T, V), got {tuple(log_probs.shape)}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: expected 'none', 'mean' or 'sum'")
    B = log_probs.shape[0]
    padded, lens = pad_targets(targets, target_lens, pad=blank, device="cpu")
    if padded.shape[0] != B:
        raise ValueError(f"{padded.shape[0]} targets for a batch of {B}")
    if lens.numel() and bool((padded[padded != blank] >= log_probs.shape[-1]).any()):
        raise ValueError("target ids must be < vocabulary size")
    with torch.autocast(device_type=log_probs.device.type, enabled=False):
        # Concatenated CPU targets, as icefall passes them (cuDNN/native both accept this form).
        # fp16/bf16 are upcast to fp32; fp64 stays fp64 (gradcheck).
        x = log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs
        return F.ctc_loss(x.permute(1, 0, 2), flat_targets(padded, lens),
                          input_lengths=log_probs_lens.to(torch.int64).cpu(), target_lengths=lens,
                          blank=blank, reduction=reduction, zero_infinity=zero_infinity)
