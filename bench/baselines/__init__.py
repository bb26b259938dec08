"""Baseline encoders the benchmarks compare the Zipformer against (the paper's Figure 3 / Table 2).

`ConformerConfig.preset("S"|"M"|"L")` and `ConformerAsrModel` reproduce the paper's own
"reproduced Conformer" rows of Table 2 (pruned-transducer Conformer-S/M/L; the paper's parameter
and FLOP counts are in bench/paper.py, bench/table2.py compares them). Benchmark code only: not
part of the installed zipformer_fast package.
"""
from .conformer import ConformerConfig, ConformerEncoder
from .asr import ConformerAsrModel

__all__ = ["ConformerConfig", "ConformerEncoder", "ConformerAsrModel"]
