"""Write an AsrModel as the ONNX files sherpa-onnx loads, with icefall's names and metadata.

Layout under `out_dir` (each folder is a complete sherpa-onnx model directory):
  offline/   encoder.onnx decoder.onnx joiner.onnx tokens.txt   (model_type "zipformer2")
  ctc/       model.onnx tokens.txt                               (model_type "zipformer2_ctc")
  streaming/ encoder.onnx decoder.onnx joiner.onnx tokens.txt   (causal models only)
plus `<name>.int8.onnx` (onnxruntime dynamic quantisation of the MatMul weights, and of the
decoder's embedding Gather, as icefall quantises) and `<name>.fp16.onnx` (float16 weights and
activations, float32 inputs/outputs) when asked for.

Graph contract (sherpa-onnx offline-transducer-model.cc, offline-zipformer-ctc-model.cc; icefall
export-onnx.py / export-onnx-ctc.py): encoder x (N, T, 80) float32 + x_lens (N,) int64 ->
encoder_out (N, T', joiner_dim) + encoder_out_lens (N,); decoder y (N, context_size) int64 ->
decoder_out (N, joiner_dim); joiner encoder_out, decoder_out -> logit (N, vocab); CTC x, x_lens ->
log_probs (N, T', vocab), log_probs_len. Batch and time axes are dynamic.

Every check (heads, tokenizer, causality, output files) runs before the first file is written.
"""
from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..runtime import use_backend
from ..data.optional import require
from .wrappers import OnnxCtcModel, OnnxDecoder, OnnxEncoder, OnnxJoiner

KINDS = ("offline", "ctc", "streaming")
MIN_OPSET = 13
AUTHOR = "zipformer_fast"


@dataclass
class ExportSpec:
    """What to write. kinds: any of "offline" (transducer), "ctc", "streaming" (transducer; needs a
    causal model). max_frames: the longest sequence (in 50 Hz frames after Conv-Embed, i.e. about
    max_frames / 50 seconds of audio) the positional-encoding tables baked into the graph cover;
    icefall's export has 1000 (20 s). chunk_size / left_context_frames (50 Hz frames, icefall's
    --chunk-size / --left-context-frames): a causal model's streaming chunk and attention left
    context, also used by its offline graphs; default: the first positive values it was trained with."""
    kinds: Tuple[str, ...] = ("offline", "ctc")
    opset: int = MIN_OPSET
    int8: bool = True
    fp16: bool = False
    max_frames: int = 1000
    chunk_size: Optional[int] = None
    left_context_frames: Optional[int] = None
    overwrite: bool = False
    extra_metadata: Dict[str, str] = field(default_factory=dict)


def _require_onnx():
    return require("onnx", "ONNX export (pip install 'zipformer_fast[export]')")


def write_tokens(tokenizer_path: Union[str, Path], path: Union[str, Path]) -> int:
    """tokens.txt as sherpa-onnx reads it: `<symbol> <id>` per line, <blk> 0 first. Returns the count."""
    from ..data.tokenizer import Tokenizer
    sp = Tokenizer(tokenizer_path).sp
    lines = [f"{sp.id_to_piece(i)} {i}" for i in range(sp.get_piece_size())]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def add_metadata(path: Union[str, Path], meta: Dict[str, object]) -> None:
    onnx = _require_onnx()
    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        prop = existing.get(key) or model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    onnx = _require_onnx()
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


@contextlib.contextmanager
def _traceable(model, max_frames: int):
    """Eval mode, no autograd, reference ops, and positional tables long enough for max_frames.
    torch.onnx.export restores each module's train/eval flag afterwards; eval() is reapplied here so
    that the caller's model is left in eval mode whatever the wrapper's flag was."""
    from ..nn.pos_encoding import CompactRelPositionalEncoding, compact_rel_pos_table
    was_training = model.training
    model.eval()
    for m in model.modules():
        if isinstance(m, CompactRelPositionalEncoding):
            m.pe = compact_rel_pos_table(max_frames, m.embed_dim, m.length_factor, torch.device("cpu"))
    try:
        with use_backend("reference"), torch.no_grad(), _quiet_tracer():
            yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_tracer():
    # The input checks inside the modules (shape comparisons) become constants of the trace; that is
    # intended (they can only pass for the traced shapes' ranks/widths), so their warnings are noise.
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        yield


def _export(module, args, path: Path, input_names, output_names, dynamic_axes, opset: int) -> None:
    module.eval()
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=opset,
                      input_names=list(input_names), output_names=list(output_names),
                      dynamic_axes=dynamic_axes, do_constant_folding=True)


def _quantize(src: Path, dst: Path, op_types: List[str]) -> None:
    require("onnxruntime", "int8 quantisation (pip install onnxruntime)")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    quantize_dynamic(model_input=str(src), model_output=str(dst), op_types_to_quantize=op_types,
                     weight_type=QuantType.QInt8)


def _to_fp16(src: Path, dst: Path) -> None:
    onnx = _require_onnx()
    require("onnxruntime", "the fp16 conversion (pip install onnxruntime)")
    from onnxruntime.transformers.float16 import convert_float_to_float16
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(dst))


def _variants(path: Path, spec: ExportSpec, int8_ops: List[str]) -> Dict[str, Path]:
    out = {"fp32": path}
    if spec.int8:
        out["int8"] = path.with_suffix(".int8.onnx")
        _quantize(path, out["int8"], int8_ops)
    if spec.fp16:
        out["fp16"] = path.with_suffix(".fp16.onnx")
        _to_fp16(path, out["fp16"])
    return out


def check_export(model, tokenizer_path, spec: ExportSpec, out_dir: Path) -> int:
    """All the reasons not to export, raised before anything is written. Returns the vocab size."""
    from ..asr.model import AsrModel
    from ..data.tokenizer import Tokenizer
    if not isinstance(model, AsrModel):
        raise TypeError(f"export_onnx needs a zipformer_fast AsrModel, got {type(model).__name__}")
    bad = [k for k in spec.kinds if k not in KINDS]
    if bad or not spec.kinds:
        raise ValueError(f"kinds {list(spec.kinds)}: choose from {KINDS}")
    if spec.opset < MIN_OPSET:
        raise ValueError(f"opset {spec.opset}: sherpa-onnx's zipformer graphs need opset >= {MIN_OPSET}")
    if ("offline" in spec.kinds or "streaming" in spec.kinds) and not model.use_transducer:
        raise ValueError("this model has no transducer head (decoder/joiner): export kinds=('ctc',) only")
    if "ctc" in spec.kinds and not model.use_ctc:
        raise ValueError("this model has no CTC head: drop 'ctc' from the export kinds")
    if "streaming" in spec.kinds:
        cfg = model.config
        if not cfg.causal:
            raise ValueError("streaming export needs a causal model (trained with causal=True and chunked "
                             "attention); this model is non-causal: export kinds 'offline'/'ctc' instead")
        from .streaming import SHERPA_EMBED_CHANNELS
        if cfg.embed_channels[2] > SHERPA_EMBED_CHANNELS:
            raise ValueError(f"Conv-Embed has {cfg.embed_channels[2]} output channels; sherpa-onnx's streaming "
                             f"Zipformer holds its state in {SHERPA_EMBED_CHANNELS}")
    if model.config.causal:
        from .streaming import streaming_settings
        chunk, left = streaming_settings(model, spec.chunk_size, spec.left_context_frames)
        enc = model.encoder
        saved = (list(enc.chunk_size), list(enc.left_context_frames))
        try:
            enc.configure_streaming(chunk, left)  # raises for values the model was not trained with
        finally:
            enc.chunk_size, enc.left_context_frames = saved
    if spec.max_frames < 16:
        raise ValueError(f"max_frames={spec.max_frames}: too short to be useful")
    if tokenizer_path is None or not Path(tokenizer_path).is_file():
        raise FileNotFoundError(f"tokenizer {tokenizer_path}: no such file (the sentencepiece bpe.model the "
                                "model was trained with; sherpa-onnx needs its tokens.txt)")
    tok = Tokenizer(tokenizer_path)
    if tok.vocab_size != model.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {tok.vocab_size} pieces but the model's vocabulary "
                         f"is {model.vocab_size}: not the tokenizer this model was trained with")
    for kind in spec.kinds:
        d = out_dir / kind
        if d.exists() and any(d.iterdir()) and not spec.overwrite:
            raise FileExistsError(f"{d} exists and is not empty (pass overwrite=True / --overwrite)")
    _require_onnx()
    if spec.int8 or spec.fp16:
        require("onnxruntime", "int8/fp16 variants (pip install onnxruntime)")
    return tok.vocab_size


def _transducer_meta(model) -> Dict[str, Dict[str, object]]:
    cfg = model.config
    return {
        "decoder": {"vocab_size": model.vocab_size, "context_size": model.decoder.context_size},
        "joiner": {"joiner_dim": cfg.joiner_dim},
    }


def _encoder_meta(model, spec: ExportSpec, comment: str) -> Dict[str, object]:
    cfg = model.config
    return {"model_type": "zipformer2", "version": "1", "model_author": AUTHOR, "comment": comment,
            "vocab_size": model.vocab_size, "context_size": cfg.context_size, "joiner_dim": cfg.joiner_dim,
            "encoder_dim": cfg.output_dim, "max_frames": spec.max_frames, **spec.extra_metadata}


def export_decoder_joiner(model, out: Path, spec: ExportSpec) -> Dict[str, Dict[str, Path]]:
    """decoder.onnx and joiner.onnx (shared by the offline and streaming transducers)."""
    cfg = model.config
    meta = _transducer_meta(model)
    dec = out / "decoder.onnx"
    y = torch.zeros(1, model.decoder.context_size, dtype=torch.int64)
    _export(OnnxDecoder(model), (y,), dec, ["y"], ["decoder_out"],
            {"y": {0: "N"}, "decoder_out": {0: "N"}}, spec.opset)
    add_metadata(dec, meta["decoder"])
    join = out / "joiner.onnx"
    e = torch.rand(1, cfg.joiner_dim)
    _export(OnnxJoiner(model), (e, e.clone()), join, ["encoder_out", "decoder_out"], ["logit"],
            {"encoder_out": {0: "N"}, "decoder_out": {0: "N"}, "logit": {0: "N"}}, spec.opset)
    add_metadata(join, meta["joiner"])
    return {"decoder": _variants(dec, spec, ["MatMul", "Gather"]), "joiner": _variants(join, spec, ["MatMul"])}


def export_offline_transducer(model, out: Path, spec: ExportSpec) -> Dict[str, Dict[str, Path]]:
    enc = out / "encoder.onnx"
    extra = _export_offline(model, OnnxEncoder(model), enc, ["encoder_out", "encoder_out_lens"], spec)
    add_metadata(enc, {**_encoder_meta(model, spec, "non-streaming zipformer2"), **extra})
    files = {"encoder": _variants(enc, spec, ["MatMul"])}
    files.update(export_decoder_joiner(model, out, spec))
    return files


def _export_offline(model, graph, path: Path, output_names, spec: ExportSpec) -> dict:
    """Trace a whole-utterance graph (x (N, T, 80), x_lens) -> (frames (N, T', ...), lengths (N,))
    with dynamic N and T; returns the chunking metadata of a causal model (else {})."""
    x = torch.zeros(1, 300, model.config.feature_dim)
    x_lens = torch.tensor([300], dtype=torch.int64)
    frames, lengths = output_names
    with _offline_chunking(model, spec) as extra:
        _export(graph, (x, x_lens), path, ["x", "x_lens"], output_names,
                {"x": {0: "N", 1: "T"}, "x_lens": {0: "N"}, frames: {0: "N", 1: "T"}, lengths: {0: "N"}},
                spec.opset)
    return extra


@contextlib.contextmanager
def _offline_chunking(model, spec: ExportSpec):
    """A causal model's full-utterance graph uses one chunk size and left context (icefall's export
    requires a single --chunk-size for it too): the streaming ones, recorded in the metadata."""
    if not model.config.causal:
        yield {}
        return
    from .streaming import configured, streaming_settings
    chunk, left = streaming_settings(model, spec.chunk_size, spec.left_context_frames)
    with configured(model, chunk, left):
        yield {"chunk_size": chunk, "left_context_frames": left}


def export_ctc(model, out: Path, spec: ExportSpec) -> Dict[str, Dict[str, Path]]:
    path = out / "model.onnx"
    extra = _export_offline(model, OnnxCtcModel(model), path, ["log_probs", "log_probs_len"], spec)
    add_metadata(path, {**extra, "model_type": "zipformer2_ctc", "version": "1", "model_author": AUTHOR,
                        "comment": "non-streaming zipformer2 CTC", "vocab_size": model.vocab_size,
                        "max_frames": spec.max_frames, **spec.extra_metadata})
    return {"model": _variants(path, spec, ["MatMul"])}


def export_onnx(model, out_dir: Union[str, Path], tokenizer_path: Union[str, Path],
                spec: Optional[ExportSpec] = None) -> Dict[str, Dict[str, Dict[str, Path]]]:
    """Export `model` (an AsrModel with trained weights) to `out_dir`/<kind>/ for each spec.kinds.

    Returns {kind: {graph: {"fp32"|"int8"|"fp16": path}}} plus {kind: {"tokens": {"txt": path}}}.
    Raises (before writing anything) on a missing/mismatched tokenizer, a missing head, a
    streaming export of a non-causal model, or a non-empty output folder without overwrite.
    """
    spec = spec or ExportSpec()
    out_dir = Path(out_dir)
    check_export(model, tokenizer_path, spec, out_dir)
    result = {}
    with _traceable(model, spec.max_frames):
        for kind in spec.kinds:
            d = out_dir / kind
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
            if kind == "offline":
                files = export_offline_transducer(model, d, spec)
            elif kind == "ctc":
                files = export_ctc(model, d, spec)
            else:
                from .streaming import export_streaming_transducer
                files = export_streaming_transducer(model, d, spec)
            write_tokens(tokenizer_path, d / "tokens.txt")
            files["tokens"] = {"txt": d / "tokens.txt"}
            result[kind] = files
    return result
