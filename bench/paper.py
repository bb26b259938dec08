"""The reference numbers the benchmarks compare against, each written once.

PAPER: the Zipformer paper's Table 2 (pruned transducer) and Table 8 (CTC) rows as printed: params
(M, whole model with its heads), GFLOPs of the encoder for one 30 s utterance (DeepSpeed's
profiler) and WER % on LibriSpeech test-clean / test-other. Figure 3 places each model at these
WERs. ICEFALL_GFLOPS: icefall's own FlopCounter count of the Zipformer encoders for 30 s (it
counts like torch's FlopCounterMode, which bench/flops.py uses, so ours must match it closely).
"""
from __future__ import annotations

from typing import NamedTuple


class PaperRow(NamedTuple):
    params_m: float
    gflops_30s: float
    wer_clean: float
    wer_other: float

    @property
    def wer_avg(self) -> float:
        """Figure 3's y axis: the WER averaged over test-clean and test-other."""
        return (self.wer_clean + self.wer_other) / 2


PAPER = {
    "zipformer-S": PaperRow(23.3, 40.8, 2.42, 5.73),
    "zipformer-M": PaperRow(65.6, 62.9, 2.21, 4.79),
    "zipformer-L": PaperRow(148.4, 107.7, 2.06, 4.63),
    "zipformer-S-ctc": PaperRow(22.1, 40.8, 2.85, 6.91),
    "zipformer-M-ctc": PaperRow(64.3, 62.9, 2.51, 6.02),
    "zipformer-L-ctc": PaperRow(147.0, 107.7, 2.49, 5.70),
    "conformer-S": PaperRow(9.8, 29.1, 3.75, 9.24),
    "conformer-M": PaperRow(28.4, 77.0, 2.96, 7.11),
    "conformer-L": PaperRow(122.5, 294.2, 2.46, 5.55),
}

ICEFALL_GFLOPS = {"zipformer-S": 40.6, "zipformer-M": 62.8, "zipformer-L": 107.5}
