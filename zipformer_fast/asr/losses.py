"""The loss terms of one batch, as icefall's `AsrModel.forward` (icefall
egs/librispeech/ASR/zipformer/model.py AsrModel.forward at 36e0420c7e3e849a25b3d24dbf913c424f3d23c9):
the encoder on the (optionally CR-CTC-doubled) batch, then whichever heads the model has.

    simple_loss, pruned_loss, ctc_loss, attention_decoder_loss, cr_loss = model(x, x_lens, y, ...)

Every term is a sum over the batch (icefall's reduction="sum"). With `use_cr_ctc=True` the batch
is run twice (two views of each utterance, zipformer_fast.asr.cr_ctc) and every term is halved so
that it stays a per-original-utterance sum. A head the model lacks gives a 0-dim zero tensor (icefall
gives `torch.empty(0)`; a zero scalar adds, scales and logs like the other terms), and so does
`cr_loss` without CR-CTC. `AsrLosses.terms` picks out the terms that exist, keyed as
`LossWeights.combine` takes them.

`y`: the transcripts as token-id lists, or a two-axis k2.RaggedTensor (icefall's form; k2's own or
zipformer_fast.compat.k2's stand-in).
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional

import torch
from torch import Tensor

from .cr_ctc import CrCtcAugment, cr_ctc_loss, time_warp
from .ctc import ctc_loss
from .transducer_loss import transducer_loss


class AsrLosses(NamedTuple):
    """What `AsrModel.forward` returns; unpacks like icefall's 5-tuple, in its order."""
    simple_loss: Tensor
    pruned_loss: Tensor
    ctc_loss: Tensor
    attention_decoder_loss: Tensor
    cr_loss: Tensor

    def terms(self, model, use_cr_ctc: bool = False) -> Dict[str, Tensor]:
        """The terms `model`'s heads produce (cr only with CR-CTC), keyed for LossWeights.combine."""
        out = {}
        if model.use_transducer:
            out["simple"], out["pruned"] = self.simple_loss, self.pruned_loss
        if model.use_ctc:
            out["ctc"] = self.ctc_loss
            if use_cr_ctc:
                out["cr"] = self.cr_loss
        if getattr(model, "use_attention_decoder", False):
            out["attention_decoder"] = self.attention_decoder_loss
        return out


def target_lists(y, batch_size: int, vocab_size: int) -> List[List[int]]:
    """Token-id lists from id lists or a two-axis ragged tensor; ValueError on a wrong count of
    transcripts or an id outside [0, vocab_size)."""
    if isinstance(y, Tensor):
        raise TypeError("y must be token-id lists or a k2.RaggedTensor, not a tensor (a padded tensor "
                        "has no lengths; use k2.RaggedTensor or lists)")
    if hasattr(y, "num_axes") and hasattr(y, "tolist"):  # k2.RaggedTensor or compat.k2's
        if y.num_axes != 2:
            raise ValueError(f"y must be a ragged tensor with 2 axes [utt][token], got {y.num_axes}")
        rows = y.tolist()
    else:
        try:
            rows = [[int(t) for t in r] for r in y]
        except TypeError as exc:
            raise TypeError(f"y must be token-id lists or a k2.RaggedTensor, got {type(y).__name__}") from exc
    if len(rows) != batch_size:
        raise ValueError(f"y has {len(rows)} transcripts for a batch of {batch_size} utterances")
    bad = [b for b, r in enumerate(rows) if any(t < 0 or t >= vocab_size for t in r)]
    if bad:
        raise ValueError(f"y: utterances {bad} hold token ids outside [0, vocab_size={vocab_size})")
    return rows


def cr_ctc_views(x: Tensor, x_lens: Tensor, use_spec_aug: bool, spec_augment,
                 supervision_segments: Optional[Tensor], time_warp_factor: Optional[int]):
    """The doubled batch of CR-CTC: (2N, T, F), (2N,), rows b and b + N two views of utterance b.

    Without use_spec_aug the copies are identical (they differ by dropout only; icefall's
    validation). spec_augment is either a CrCtcAugment (warp and masks, its own settings) or,
    as in icefall, a SpecAugment without time warp applied to the copies after one time warp
    (`time_warp_factor`, over `supervision_segments` (S, 3) = (utterance, start, frames), or
    over each utterance's x_lens frames when None)."""
    if not use_spec_aug:
        return CrCtcAugment.duplicate(x, x_lens)
    if spec_augment is None:
        raise ValueError("use_spec_aug=True needs spec_augment (a CrCtcAugment, or a SpecAugment "
                         "with time_warp_factor < 1 as icefall passes)")
    if isinstance(spec_augment, CrCtcAugment):
        return spec_augment(x, x_lens)
    if getattr(spec_augment, "time_warp_factor", 0) >= 1:
        raise ValueError("spec_augment must not time-warp itself (time_warp_factor < 1): the warp is "
                         "applied once, before the batch is doubled, so both views share it")
    if supervision_segments is None:
        supervision_segments = torch.stack([torch.arange(x.shape[0]), torch.zeros_like(x_lens.cpu()),
                                            x_lens.cpu()], dim=1)
    warped = time_warp(x, supervision_segments, time_warp_factor)
    return spec_augment(warped.repeat(2, 1, 1)), x_lens.repeat(2)


def asr_losses(model, x: Tensor, x_lens: Tensor, y, prune_range: int = 5, am_scale: float = 0.0,
               lm_scale: float = 0.0, use_cr_ctc: bool = False, use_spec_aug: bool = False,
               spec_augment=None, supervision_segments: Optional[Tensor] = None,
               time_warp_factor: Optional[int] = 80) -> AsrLosses:
    """AsrModel.forward's body (see the module docstring and AsrModel.forward)."""
    model.check_inputs(x, x_lens)
    targets = target_lists(y, x.shape[0], model.vocab_size)
    if use_cr_ctc:
        if not model.use_ctc:
            raise ValueError("use_cr_ctc=True needs a model with a CTC head (use_ctc=True)")
        x, x_lens = cr_ctc_views(x, x_lens, use_spec_aug, spec_augment, supervision_segments,
                                 time_warp_factor)
    all_targets = targets + targets if use_cr_ctc else targets
    half = 0.5 if use_cr_ctc else 1.0
    # The inputs were checked above; the augmented copies keep their lengths.
    encoder_out, encoder_out_lens = model.encode(x, x_lens)
    zero = torch.zeros((), device=encoder_out.device)
    simple = pruned = ctc = aed = cr = zero
    if model.use_transducer:
        simple, pruned = transducer_loss(model, encoder_out, encoder_out_lens, all_targets,
                                         prune_range=prune_range, lm_scale=lm_scale, am_scale=am_scale,
                                         reduction="sum")
        simple, pruned = half * simple, half * pruned
    if model.use_ctc and use_cr_ctc:  # cr_ctc_loss halves both terms itself
        ctc, cr = cr_ctc_loss(model.ctc_log_probs(encoder_out), encoder_out_lens, targets)
    elif model.use_ctc:
        ctc = ctc_loss(model.ctc_log_probs(encoder_out), encoder_out_lens, targets, blank=0, reduction="sum")
    if getattr(model, "use_attention_decoder", False):
        aed = half * model.forward_attention_decoder(encoder_out, encoder_out_lens, all_targets)
    return AsrLosses(simple, pruned, ctc, aed, cr)
