"""The pruned transducer loss of an AsrModel, exactly as icefall's `AsrModel.forward_transducer`:

  decoder([blank] + y) -> simple_lm_proj / simple_am_proj -> smoothed simple loss (fp32) whose
  occupation probabilities give the prune ranges -> joiner on the pruned (already projected)
  encoder/decoder pairs (B, T, R, joiner_dim) -> pruned loss (fp32).

Uses the model's modules by their icefall names: decoder (with .blank_id), joiner (.encoder_proj,
.decoder_proj, forward(..., project_input=False)), simple_am_proj, simple_lm_proj.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .rnnt_loss import do_rnnt_pruning, get_rnnt_prune_ranges, rnnt_loss_pruned, rnnt_loss_smoothed
from .targets import Targets, pad_targets


def transducer_loss(model, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Targets,
                    target_lens: Optional[Tensor] = None, prune_range: int = 5,
                    lm_scale: float = 0.25, am_scale: float = 0.0,
                    reduction: str = "sum", rnnt_type: str = "regular") -> Tuple[Tensor, Tensor]:
    """-> (simple_loss, pruned_loss), each reduced with `reduction` (icefall: "sum").

    encoder_out (B, T, E), encoder_out_lens (B,); targets: list of id lists or padded (B, S) with
    target_lens. Ids must not include blank."""
    if encoder_out.ndim != 3 or encoder_out_lens.shape != (encoder_out.shape[0],):
        raise ValueError(f"encoder_out must be (B, T, E) with lens (B,), got "
                         f"{tuple(encoder_out.shape)} and {tuple(encoder_out_lens.shape)}")
    blank = model.decoder.blank_id
    device = encoder_out.device
    y_padded, y_lens = pad_targets(targets, target_lens, pad=0, device=device)
    B = encoder_out.shape[0]
    if y_padded.shape[0] != B:
        raise ValueError(f"{y_padded.shape[0]} targets for a batch of {B}")

    # Decoder input [blank] + y, padded with blank.
    keep = torch.arange(y_padded.shape[1], device=device).unsqueeze(0) < y_lens.unsqueeze(1)
    sos_y = torch.cat([torch.full((B, 1), blank, dtype=torch.int64, device=device),
                       y_padded.masked_fill(~keep, blank)], dim=1)
    decoder_out = model.decoder(sos_y)  # (B, S+1, decoder_dim)

    boundary = torch.zeros((B, 4), dtype=torch.int64, device=device)
    boundary[:, 2] = y_lens
    boundary[:, 3] = encoder_out_lens.to(torch.int64)

    lm = model.simple_lm_proj(decoder_out)
    am = model.simple_am_proj(encoder_out)
    with torch.autocast(device_type=device.type, enabled=False):
        simple_loss, (px_grad, py_grad) = rnnt_loss_smoothed(
            lm.float(), am.float(), y_padded, blank, lm_only_scale=lm_scale,
            am_only_scale=am_scale, boundary=boundary, rnnt_type=rnnt_type,
            reduction=reduction, return_grad=True)

    ranges = get_rnnt_prune_ranges(px_grad, py_grad, boundary, prune_range)
    am_pruned, lm_pruned = do_rnnt_pruning(model.joiner.encoder_proj(encoder_out),
                                           model.joiner.decoder_proj(decoder_out), ranges)
    logits = model.joiner(am_pruned, lm_pruned, project_input=False)  # (B, T, R, V)
    with torch.autocast(device_type=device.type, enabled=False):
        pruned_loss = rnnt_loss_pruned(logits.float(), y_padded, ranges, blank, boundary,
                                       rnnt_type=rnnt_type, reduction=reduction)
    return simple_loss, pruned_loss
