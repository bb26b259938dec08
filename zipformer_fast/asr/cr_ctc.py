"""Consistency-regularised CTC (CR-CTC), as icefall's zipformer model.py `forward` with
use_cr_ctc=True and `forward_cr_ctc`, and train.py's `get_spec_augment` / `--time-mask-ratio`.

Each batch is run twice through the encoder as one batch of 2N: both copies share one time warp,
then get independent SpecAugment frequency and time masks (more time masking than usual:
`time_mask_ratio` x icefall's default count and fraction). The CTC loss is taken on both copies,
and the consistency loss is the KL divergence from each copy's (detached) CTC posteriors to the
other's, summed over the valid frames:

    cr = sum_{b, t < len_b, v} exp(p'_{b,t,v}) * (p'_{b,t,v} - p_{b,t,v}),  p' = roll(p.detach(), N)

As in icefall, both terms (and any transducer / attention-decoder terms computed on the doubled
batch) are halved, so that they stay per-original-utterance sums; the consistency scale warms up
linearly over `warm_step` batches (zipformer_fast.asr.loss_weights.LossWeights).

Bad input: targets that need more frames than an utterance has (len + adjacent repeats) raise a
ValueError naming the utterance, unless zero_infinity=True zeroes that utterance's CTC loss as
torch does. Empty transcripts are allowed (their CTC loss is the all-blank path).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .ctc import ctc_loss
from .targets import Targets, pad_targets

# icefall train.py get_spec_augment: counts/fractions are multiplied by --time-mask-ratio.
DEFAULT_NUM_FRAME_MASKS = 10
DEFAULT_MAX_FRAMES_MASK_FRACTION = 0.15


def consistency_loss(log_probs: Tensor, lens: Tensor) -> Tensor:
    """KL consistency between the two halves of a (2N, T, V) batch of CTC log-probs, each half
    pulled towards the other's detached distribution; frames t >= lens[b] are excluded. Sum."""
    if log_probs.ndim != 3 or log_probs.shape[0] % 2:
        raise ValueError(f"log_probs must be (2N, T, V) with the two copies stacked on dim 0, got "
                         f"{tuple(log_probs.shape)}")
    if lens.shape != (log_probs.shape[0],):
        raise ValueError(f"lens must be ({log_probs.shape[0]},), got {tuple(lens.shape)}")
    x = log_probs.float() if log_probs.dtype in (torch.float16, torch.bfloat16) else log_probs
    other = torch.roll(x.detach(), x.shape[0] // 2, dims=0)  # [x1, x2] -> [x2, x1]
    kl = F.kl_div(input=x, target=other, reduction="none", log_target=True)  # (2N, T, V)
    valid = torch.arange(x.shape[1], device=x.device).unsqueeze(0) < lens.to(x.device).unsqueeze(1)
    return kl.masked_fill(~valid.unsqueeze(-1), 0.0).sum()


def ctc_required_frames(targets: Targets, target_lens: Optional[Tensor] = None) -> Tensor:
    """Frames CTC needs per utterance: the number of labels plus one blank between each pair of
    equal adjacent labels. (B,) int64 on CPU."""
    padded, lens = pad_targets(targets, target_lens, pad=-1, device="cpu")
    repeats = (padded[:, 1:] == padded[:, :-1]) & (
        torch.arange(padded.shape[1])[1:].unsqueeze(0) < lens.unsqueeze(1))
    return lens + repeats.sum(dim=1)


def check_ctc_lengths(log_probs_lens: Tensor, targets: Targets, target_lens: Optional[Tensor] = None) -> None:
    """ValueError naming the utterances whose targets cannot be aligned to their frames."""
    need = ctc_required_frames(targets, target_lens)
    have = log_probs_lens.to("cpu", torch.int64)
    bad = (need > have).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"utterances {bad}: targets need {need[bad].tolist()} CTC frames but the encoder "
                         f"output has {have[bad].tolist()}; filter such utterances (icefall keeps "
                         "T_sub - 2 >= #tokens) or pass zero_infinity=True")


def cr_ctc_loss(log_probs: Tensor, log_probs_lens: Tensor, targets: Targets,
                target_lens: Optional[Tensor] = None, blank: int = 0,
                zero_infinity: bool = False) -> Tuple[Tensor, Tensor]:
    """log_probs (2N, T, V): CTC log-probs of the two augmented copies stacked on dim 0 (rows b and
    b + N come from utterance b); lens (2N,); targets: the N original transcripts.
    -> (0.5 * CTC loss summed over the 2N rows, 0.5 * consistency loss), icefall's values."""
    if log_probs.ndim != 3 or log_probs.shape[0] % 2:
        raise ValueError(f"log_probs must be (2N, T, V), got {tuple(log_probs.shape)}")
    padded, lens = pad_targets(targets, target_lens, pad=blank, device="cpu")
    N = log_probs.shape[0] // 2
    if padded.shape[0] != N:
        raise ValueError(f"{padded.shape[0]} transcripts for {log_probs.shape[0]} rows; give the N "
                         "original transcripts (they are duplicated here)")
    padded2, lens2 = padded.repeat(2, 1), lens.repeat(2)
    if not zero_infinity:  # named by original utterance (both copies have the same lengths)
        check_ctc_lengths(torch.minimum(log_probs_lens[:N], log_probs_lens[N:]), padded, lens)
    ctc = ctc_loss(log_probs, log_probs_lens, padded2, lens2, blank=blank, reduction="sum",
                   zero_infinity=zero_infinity)
    return 0.5 * ctc, 0.5 * consistency_loss(log_probs, log_probs_lens)


def time_warp(features: Tensor, supervision_segments: Tensor, factor: Optional[int] = 80,
              p: float = 0.9) -> Tensor:
    """icefall.utils.time_warp: each (utterance, start, frames) segment of (N, T, F) features is
    warped with probability p by lhotse's time_warp (drawn from Python's `random`, as lhotse);
    factor None or < 1 leaves the features as they are. Needs lhotse."""
    import random
    if not factor or factor < 1:
        return features
    if supervision_segments.ndim != 2 or supervision_segments.shape[1] != 3:
        raise ValueError(f"supervision_segments must be (S, 3) = (utterance, start, frames), got "
                         f"{tuple(supervision_segments.shape)}")
    from ..data.optional import require
    warp = require("lhotse.dataset.signal_transforms", "time warping").time_warp
    out = features.clone()
    for b, start, n in supervision_segments.tolist():
        if random.random() > p:
            continue
        out[b, start:start + n] = warp(features[b, start:start + n], factor=factor)
    return out


class CrCtcAugment:
    """Doubles a batch for CR-CTC the way icefall's model.forward does: one time warp (p 0.9,
    over each utterance's valid frames), then `x.repeat(2, 1, 1)` and lhotse's SpecAugment
    (time_warp_factor 0, 2 frequency masks of <= 27 bins, int(10 * ratio) time masks of <= 100
    frames covering at most 0.15 * ratio of the frames), which draws independent masks per row.

    Needs lhotse (the data extra); uses Python's `random` module as lhotse does, so the training
    loop's RNG state covers it. Call it in training only; `duplicate` is the evaluation form."""

    def __init__(self, time_mask_ratio: float = 2.5, time_warp_factor: int = 80,
                 features_mask_size: int = 27, num_feature_masks: int = 2, frames_mask_size: int = 100,
                 p: float = 0.9):
        from ..data.optional import require
        if time_mask_ratio <= 0:
            raise ValueError(f"time_mask_ratio={time_mask_ratio}: must be > 0")
        lhotse = require("lhotse.dataset.signal_transforms", "CR-CTC SpecAugment")
        self.time_warp_factor = time_warp_factor
        self.p = p
        self.spec_augment = lhotse.SpecAugment(
            time_warp_factor=0, num_frame_masks=int(DEFAULT_NUM_FRAME_MASKS * time_mask_ratio),
            features_mask_size=features_mask_size, num_feature_masks=num_feature_masks,
            frames_mask_size=frames_mask_size,
            max_frames_mask_fraction=DEFAULT_MAX_FRAMES_MASK_FRACTION * time_mask_ratio, p=p)

    def time_warp(self, features: Tensor, feature_lens: Tensor) -> Tensor:
        lens = feature_lens.cpu()
        segments = torch.stack([torch.arange(lens.shape[0]), torch.zeros_like(lens), lens], dim=1)
        return time_warp(features, segments, self.time_warp_factor, self.p)

    @staticmethod
    def duplicate(features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
        return features.repeat(2, 1, 1), feature_lens.repeat(2)

    def __call__(self, features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(N, T, F), (N,) -> (2N, T, F), (2N,): rows b and b + N are two views of utterance b."""
        if features.ndim != 3 or feature_lens.shape != (features.shape[0],):
            raise ValueError(f"expected (N, T, F) features and (N,) lengths, got {tuple(features.shape)} "
                             f"and {tuple(feature_lens.shape)}")
        warped = self.time_warp(features, feature_lens)
        return self.spec_augment(warped.repeat(2, 1, 1)), feature_lens.repeat(2)
