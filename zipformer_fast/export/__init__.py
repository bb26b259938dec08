"""Deployment export: ONNX files in the layout icefall's zipformer export scripts write and
sherpa-onnx reads (offline transducer, streaming transducer, offline CTC, tokens.txt, int8/fp16).

    python -m zipformer_fast.export onnx --exp-dir exp/synthetic --bpe-model data/lang/bpe.model \
        --iter 0 --avg 3 --out-dir exp/synthetic/onnx

`onnx`, `onnxruntime` (and `sherpa-onnx` for decoding) are optional dependencies
(`pip install 'zipformer_fast[export]'`); the core package imports without them. Graphs are traced
with the pure-PyTorch reference ops (no Triton kernel can live inside an ONNX graph).
"""
from __future__ import annotations

from .._lazy import lazy_dir, lazy_exports

_EXPORTS = {
    "export_onnx": "onnx_files", "ExportSpec": "onnx_files", "read_metadata": "onnx_files",
    # the command line (python -m zipformer_fast.export): its parser and what `onnx` runs
    "get_parser": "__main__", "run_onnx": "__main__",
    # a causal model's streaming settings
    "streaming_settings": "streaming", "configured_streaming": "streaming:configured",
    # decoding exported folders with sherpa-onnx
    "sherpa_recognizer": "sherpa:recognizer", "decode_wavs": "sherpa:decode_wavs",
}

__all__ = list(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
__dir__ = lazy_dir(__name__, _EXPORTS)
