"""One batch's loss as icefall's compute_loss: encoder forward, pruned transducer (simple + pruned)
and/or CTC and/or attention decoder, optionally CR-CTC (the batch doubled with two SpecAugment
views, zipformer_fast.asr.cr_ctc), weighted by the warm-up schedule (icefall train.py compute_loss); every term is a
sum over the batch (with CR-CTC, over both copies and halved, as icefall).

`LossModule` puts the whole loss inside one forward so that DDP sees every parameter used
(the decoder, joiner and CTC head included); DDP wraps it, checkpoints save `.model`.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import nn

from zipformer_fast.asr.cr_ctc import CrCtcAugment, cr_ctc_loss
from zipformer_fast.asr.ctc import ctc_loss
from zipformer_fast.asr.loss_weights import LossWeights
from zipformer_fast.asr.transducer_loss import transducer_loss


class LossModule(nn.Module):
    def __init__(self, model, prune_range: int = 5, lm_scale: float = 0.25, am_scale: float = 0.0,
                 use_cr_ctc: bool = False, cr_augment=None):
        super().__init__()
        self.model = model
        self.prune_range, self.lm_scale, self.am_scale = prune_range, lm_scale, am_scale
        if use_cr_ctc and not model.use_ctc:
            raise ValueError("CR-CTC needs a model with a CTC head (use_ctc=True)")
        self.use_cr_ctc = use_cr_ctc
        # The two-view SpecAugment used in training (None: the copies differ by dropout only).
        self.cr_augment = cr_augment

    def forward(self, feats: torch.Tensor, feat_lens: torch.Tensor,
                targets: List[List[int]]) -> Dict[str, torch.Tensor]:
        m = self.model
        cr = self.use_cr_ctc
        if cr:  # icefall augments only in training; validation runs the plain copies
            augment = self.cr_augment if (m.training and self.cr_augment is not None) else CrCtcAugment.duplicate
            feats, feat_lens = augment(feats, feat_lens)
        all_targets = list(targets) + list(targets) if cr else targets
        half = 0.5 if cr else 1.0
        encoder_out, encoder_out_lens = m.forward_encoder(feats, feat_lens)
        terms = {}
        if m.use_transducer:
            simple, pruned = transducer_loss(
                m, encoder_out, encoder_out_lens, all_targets, prune_range=self.prune_range,
                lm_scale=self.lm_scale, am_scale=self.am_scale, reduction="sum")
            terms["simple"], terms["pruned"] = half * simple, half * pruned
        if m.use_ctc and cr:
            terms["ctc"], terms["cr"] = cr_ctc_loss(m.ctc_log_probs(encoder_out), encoder_out_lens, targets)
        elif m.use_ctc:
            terms["ctc"] = ctc_loss(m.ctc_log_probs(encoder_out), encoder_out_lens, targets,
                                    blank=0, reduction="sum")
        if getattr(m, "use_attention_decoder", False):
            terms["attention_decoder"] = half * m.forward_attention_decoder(
                encoder_out, encoder_out_lens, all_targets)
        return terms


def compute_loss(loss_module, feats: torch.Tensor, feat_lens: torch.Tensor, targets: List[List[int]],
                 batch_idx_train: int, weights: LossWeights) -> Tuple[torch.Tensor, Dict[str, float]]:
    """-> (weighted loss, logging info with per-term sums, frames and utterances)."""
    terms = loss_module(feats, feat_lens, targets)
    loss = weights.combine(batch_idx_train, **terms)
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss.item()} at batch {batch_idx_train} (terms "
                           f"{ {k: v.item() for k, v in terms.items()} }); check the data filter "
                           "(utterances with more tokens than encoder frames) and the learning rate")
    info = {k: v.detach().item() for k, v in terms.items()}
    info["loss"] = loss.detach().item()
    # icefall logs per-frame values; frames counted after 4x subsampling.
    info["frames"] = float((feat_lens // 4).sum().item())
    info["utterances"] = float(feats.size(0))
    return loss, info
