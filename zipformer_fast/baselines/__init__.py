"""Baseline encoders the benchmarks compare the Zipformer against (the paper's Figure 3 / Table 2).

`ConformerConfig.preset("S"|"M"|"L")` and `ConformerAsrModel` reproduce the paper's own
"reproduced Conformer" rows of Table 2 (pruned-transducer Conformer-S/M/L: 9.8 / 28.4 / 122.5 M
parameters with transducer heads, 29.1 / 77.0 / 294.2 GFLOPs per 30 s of audio).
"""
from .conformer import ConformerConfig, ConformerEncoder
from .asr import ConformerAsrModel

__all__ = ["ConformerConfig", "ConformerEncoder", "ConformerAsrModel"]
