"""python -m zipformer_fast.export onnx ...: write sherpa-onnx model folders from a checkpoint.

    # a recipes/train.py run: the average of the last 3 save intervals, as recipes/decode.py --avg 3
    python -m zipformer_fast.export onnx --exp-dir exp/synthetic --iter 0 --avg 3 \
        --bpe-model data/synthetic/lang/bpe.model --out-dir exp/synthetic/onnx
    # an icefall checkpoint (its architecture given as a preset or JSON config)
    python -m zipformer_fast.export onnx --icefall-checkpoint exp/epoch-30.pt --model-config M \
        --bpe-model data/lang_bpe_500/bpe.model --out-dir onnx --kinds offline

Writes <out-dir>/offline, ctc and (for a causal model, --kinds ... streaming) streaming, each a
folder sherpa-onnx loads (see zipformer_fast.export.onnx_files), then checks every graph against
PyTorch on random features and prints the relative errors (--verify 0 skips that).
"""
from __future__ import annotations

import argparse
import json
import sys


def _bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m zipformer_fast.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    o = sub.add_parser("onnx", help="ONNX files for sherpa-onnx (icefall's export-onnx*.py layout)")
    src = o.add_argument_group("which model")
    src.add_argument("--exp-dir", default=None, help="recipes/train.py experiment folder")
    src.add_argument("--checkpoint", default=None, help="a recipe checkpoint file (overrides --epoch/--iter)")
    src.add_argument("--avg-from", default=None, help="with --checkpoint: average since this checkpoint")
    src.add_argument("--epoch", type=int, default=0)
    src.add_argument("--iter", type=int, default=0, help="step checkpoint; 0 = newest")
    src.add_argument("--avg", type=int, default=1)
    src.add_argument("--use-averaged-model", type=_bool, default=True)
    src.add_argument("--icefall-checkpoint", default=None, help="an icefall checkpoint (.pt) instead")
    src.add_argument("--model-config", default=None,
                     help="preset (S, M, L, XS) or JSON config; required with --icefall-checkpoint, "
                          "checked against a recipe checkpoint's own configuration otherwise")
    src.add_argument("--use-transducer", type=_bool, default=True, help="icefall checkpoint has a transducer head")
    src.add_argument("--use-ctc", type=_bool, default=False, help="icefall checkpoint has a CTC head")
    out = o.add_argument_group("what to write")
    out.add_argument("--bpe-model", required=True, help="sentencepiece model the model was trained with")
    out.add_argument("--out-dir", required=True)
    out.add_argument("--kinds", nargs="+", default=None, choices=["offline", "ctc", "streaming"],
                     help="default: offline, plus ctc if the model has a CTC head, plus streaming if causal")
    out.add_argument("--int8", type=_bool, default=True, help="also write *.int8.onnx")
    out.add_argument("--fp16", type=_bool, default=False, help="also write *.fp16.onnx")
    out.add_argument("--opset", type=int, default=13)
    out.add_argument("--max-frames", type=int, default=1000,
                     help="longest input the graphs cover, in 50 Hz frames (1000 = 20 s, icefall's)")
    out.add_argument("--chunk-size", type=int, default=None, help="causal models: chunk (50 Hz frames)")
    out.add_argument("--left-context-frames", type=int, default=None, help="causal models: attention left context")
    out.add_argument("--overwrite", action="store_true", help="replace existing output folders")
    out.add_argument("--verify", type=_bool, default=True, help="compare every graph with PyTorch afterwards")
    return p


def run_onnx(args) -> dict:
    from pathlib import Path

    import torch

    from ..data.tokenizer import Tokenizer
    from .loading import load_for_export
    from .onnx_files import ExportSpec, export_onnx

    if not args.icefall_checkpoint and not (args.exp_dir or args.checkpoint):
        raise ValueError("give --exp-dir (with --epoch/--iter/--avg) or --checkpoint, or --icefall-checkpoint")
    if not Path(args.bpe_model).is_file():
        raise FileNotFoundError(f"--bpe-model {args.bpe_model}: no such file (the sentencepiece model the "
                                "checkpoint was trained with)")
    vocab = Tokenizer(args.bpe_model).vocab_size
    model, _ = load_for_export(args, vocab)
    kinds = args.kinds
    if kinds is None:
        kinds = ["offline"] if model.use_transducer else []
        kinds += ["ctc"] if model.use_ctc else []
        kinds += ["streaming"] if model.config.causal and model.use_transducer else []
    spec = ExportSpec(kinds=tuple(kinds), opset=args.opset, int8=args.int8, fp16=args.fp16,
                      max_frames=args.max_frames, chunk_size=args.chunk_size,
                      left_context_frames=args.left_context_frames, overwrite=args.overwrite)
    files = export_onnx(model, args.out_dir, args.bpe_model, spec)
    report = {"out_dir": str(args.out_dir), "kinds": list(kinds),
              "files": {k: {g: {q: str(p) for q, p in d.items()} for g, d in v.items()} for k, v in files.items()}}
    if args.verify:
        report["relative_error"] = verify_all(model, files)
    return report


def verify_all(model, files, seconds: float = 4.0) -> dict:
    """onnxruntime vs PyTorch on random fbank-like features (two utterances, one padded)."""
    import torch

    from .verify import compare_ctc, compare_offline, compare_streaming
    g = torch.Generator().manual_seed(0)
    T = int(seconds * 100)
    x = torch.randn(2, T, model.config.feature_dim, generator=g)
    lens = torch.tensor([T, T * 3 // 4])
    errs = {}
    for kind, graphs in files.items():
        fp32 = {k: v["fp32"] for k, v in graphs.items() if "fp32" in v}
        if kind == "offline":
            errs[kind] = compare_offline(model, fp32, x, lens)
        elif kind == "ctc":
            errs[kind] = compare_ctc(model, fp32["model"], x, lens)
        elif kind == "streaming":
            from .onnx_files import read_metadata
            meta = read_metadata(fp32["encoder"])
            errs[kind] = compare_streaming(model, fp32["encoder"], x, int(meta["chunk_size"]),
                                           int(meta["left_context_frames"]))
    return errs


def main(argv=None) -> dict:
    args = get_parser().parse_args(argv)
    try:
        report = run_onnx(args)
    except (ValueError, FileNotFoundError, FileExistsError, TypeError, ImportError) as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
