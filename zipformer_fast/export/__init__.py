"""Deployment export: ONNX files in the layout icefall's zipformer export scripts write and
sherpa-onnx reads (offline transducer, streaming transducer, offline CTC, tokens.txt, int8/fp16).

    python -m zipformer_fast.export onnx --exp-dir exp/synthetic --bpe-model data/lang/bpe.model \
        --iter 0 --avg 3 --out-dir exp/synthetic/onnx

`onnx`, `onnxruntime` (and `sherpa-onnx` for decoding) are optional dependencies
(`pip install 'zipformer_fast[export]'`); the core package imports without them. Graphs are traced
with the pure-PyTorch reference ops (no Triton kernel can live inside an ONNX graph).
"""
from __future__ import annotations

__all__ = ["export_onnx", "ExportSpec"]


def __getattr__(name):
    if name in ("export_onnx", "ExportSpec"):
        from . import onnx_files
        return getattr(onnx_files, name)
    raise AttributeError(name)
