"""How icefall's zipformer train.py weights its loss terms (compute_loss in
egs/librispeech/ASR/zipformer/train.py at icefall 36e0420); all terms are sums over
the batch, nothing is normalised by frames. `batch_idx_train` is the 1-based batch counter
(icefall increments it before computing the loss)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from torch import Tensor


def transducer_loss_scales(batch_idx_train: int, warm_step: int = 2000,
                           simple_loss_scale: float = 0.5):
    """(simple_scale, pruned_scale): simple falls 1.0 -> s and pruned rises 0.1 -> 1.0 linearly
    over the first warm_step batches, then stay at (s, 1.0)."""
    if batch_idx_train >= warm_step:
        return simple_loss_scale, 1.0
    frac = batch_idx_train / warm_step
    return 1.0 - frac * (1.0 - simple_loss_scale), 0.1 + 0.9 * frac


def check_ctc_aed_scales(ctc_loss_scale: float, attention_decoder_loss_scale: float) -> None:
    """icefall's rule for CTC + attention decoder without a transducer: the scales sum to 1."""
    if abs(ctc_loss_scale + attention_decoder_loss_scale - 1.0) > 1e-6:
        raise ValueError(f"CTC + attention decoder without transducer: icefall requires "
                         f"ctc_loss_scale + attention_decoder_loss_scale == 1, got "
                         f"{ctc_loss_scale} + {attention_decoder_loss_scale}")


@dataclass
class LossWeights:
    """icefall defaults; `combine` builds the training objective from whichever terms exist."""
    warm_step: int = 2000
    simple_loss_scale: float = 0.5
    ctc_loss_scale: float = 0.2
    cr_loss_scale: float = 0.2
    attention_decoder_loss_scale: float = 0.8

    def scales(self, batch_idx_train: int, use_transducer: bool = True,
               use_attention_decoder: bool = False) -> Dict[str, float]:
        simple, pruned = transducer_loss_scales(batch_idx_train, self.warm_step,
                                                self.simple_loss_scale)
        # Without a transducer (and without AED) icefall forces the CTC scale to 1.
        return {
            "simple": simple,
            "pruned": pruned,
            "ctc": self.ctc_loss_scale if (use_transducer or use_attention_decoder) else 1.0,
            "cr": min(batch_idx_train / self.warm_step, 1.0) * self.cr_loss_scale,
            "attention_decoder": self.attention_decoder_loss_scale,
        }

    def combine(self, batch_idx_train: int, simple: Optional[Tensor] = None,
                pruned: Optional[Tensor] = None, ctc: Optional[Tensor] = None,
                cr: Optional[Tensor] = None, attention_decoder: Optional[Tensor] = None) -> Tensor:
        terms = dict(simple=simple, pruned=pruned, ctc=ctc, cr=cr,
                     attention_decoder=attention_decoder)
        if (simple is None) != (pruned is None):
            raise ValueError("simple and pruned transducer losses come together")
        if all(v is None for v in terms.values()):
            raise ValueError("no loss term given")
        if simple is None and attention_decoder is not None and ctc is not None:
            check_ctc_aed_scales(self.ctc_loss_scale, self.attention_decoder_loss_scale)
        s = self.scales(batch_idx_train, use_transducer=simple is not None,
                        use_attention_decoder=attention_decoder is not None)
        total = None
        for name, value in terms.items():
            if value is not None:
                total = s[name] * value if total is None else total + s[name] * value
        return total
