"""The recipe's deployment stage: export the trained model to ONNX (zipformer_fast.export) and
decode the test set's wav files with sherpa-onnx, beside PyTorch.

    python -m recipes.synthetic.run --stage export      # on the exp dir a finished run left

For each of greedy search and modified beam search (beam 4), fp32 and int8, it reports sherpa-onnx's
WER and real-time factor (decoding wall time / audio duration, sherpa-onnx computing its own fbank
from the wav, one thread), the PyTorch WER of the same averaged model (recipes/decode.py's files,
when present), and the agreement of token sequences between sherpa-onnx fp32 greedy search and
our PyTorch greedy search on the manifests' fbank. Both searches skip <unk> as sherpa-onnx does
(icefall's searches skip model.unk_id; we set it to the tokenizer's). For a causal model the
streaming folder is decoded too, with sherpa-onnx's OnlineRecognizer.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

METHODS = ("greedy_search", "modified_beam_search")


def _pytorch_greedy(model, cuts, unk_id: int) -> List[List[int]]:
    from zipformer_fast import use_backend
    from zipformer_fast.asr import decode
    model.unk_id = unk_id
    hyps = []
    with torch.no_grad(), use_backend("reference"):
        for cut in cuts:
            f = torch.from_numpy(cut.load_features()).unsqueeze(0)
            enc, lens = model.forward_encoder(f, torch.tensor([f.shape[1]]))
            hyps.append(decode(model, enc, lens, method="greedy_search")[0])
    return hyps


def _pytorch_wers(exp_dir: Path) -> Dict[str, float]:
    """recipes/decode.py's test WERs in exp_dir, keyed by their folder: `greedy_search` for an offline
    model, `greedy_search-streaming-chunk32-left128` etc. for a causal one."""
    out = {}
    for f in sorted(exp_dir.glob("*/wer-test-*.json")):
        if f.parent.name.split("-")[0] in METHODS:
            out[f.parent.name] = round(json.loads(f.read_text())["wer"], 2)
    return out


def export_and_decode(data_dir, exp_dir, avg: int, chunk_size: Optional[int] = None,
                      left_context_frames: Optional[int] = None, record: Optional[str] = None) -> dict:
    from zipformer_fast.asr import error_rate
    from zipformer_fast.data import Tokenizer, load_split
    from zipformer_fast.export import decode_wavs, get_parser, run_onnx, sherpa_recognizer

    data_dir, exp_dir = Path(data_dir), Path(exp_dir)
    bpe = data_dir / "lang" / "bpe.model"
    out_dir = exp_dir / "onnx"
    flags = ["onnx", "--exp-dir", str(exp_dir), "--iter", "0", "--avg", str(avg), "--bpe-model", str(bpe),
             "--out-dir", str(out_dir), "--overwrite"]
    if chunk_size:
        flags += ["--chunk-size", str(chunk_size), "--left-context-frames", str(left_context_frames)]
    print("[run] python -m zipformer_fast.export " + " ".join(flags), flush=True)
    t0 = time.time()
    exported = run_onnx(get_parser().parse_args(flags))
    export_s = round(time.time() - t0, 1)
    print(f"[run] exported {exported['kinds']} in {export_s} s; onnxruntime vs PyTorch (relative): "
          f"{json.dumps(exported['relative_error'])}", flush=True)

    tok = Tokenizer(bpe)
    cuts = sorted(load_split(data_dir / "manifests", "test"), key=lambda c: c.id)
    wavs = [c.recording.sources[0].source for c in cuts]
    refs = [c.supervisions[0].text for c in cuts]
    results = {}
    kinds = ["offline"] + (["streaming"] if "streaming" in exported["kinds"] else [])
    for kind in kinds:
        folder = out_dir / kind
        for precision in ("fp32", "int8"):
            for method in METHODS:
                rec = sherpa_recognizer(folder, kind=kind, method=method, precision=precision, threads=1)
                r = decode_wavs(rec, wavs, folder / "tokens.txt", streaming=kind == "streaming")
                stats = error_rate(refs, tok.decode(r["hyps"]))
                key = f"{kind}/{precision}/{method}"
                results[key] = {"wer": round(100 * stats.rate, 2), "rtf": round(r["rtf"], 4),
                                "audio_seconds": round(r["audio_seconds"], 1), "hyps": r["hyps"]}
                print(f"[run] sherpa-onnx {key}: WER {results[key]['wer']:.2f}% RTF {results[key]['rtf']:.4f}",
                      flush=True)

    from recipes.decode import load_model
    import argparse
    model, params = load_model(argparse.Namespace(exp_dir=str(exp_dir), checkpoint=None, avg_from=None, epoch=0,
                                                  iter=0, avg=avg, use_averaged_model=True))
    if model.config.causal:
        from zipformer_fast.export import configured_streaming, streaming_settings
        chunk, left = streaming_settings(model, chunk_size, left_context_frames)
        with configured_streaming(model, chunk, left):
            ours = _pytorch_greedy(model, cuts, tok.unk_id)
    else:
        ours = _pytorch_greedy(model, cuts, tok.unk_id)
    theirs = results["offline/fp32/greedy_search"]["hyps"]
    same = sum(a == b for a, b in zip(ours, theirs))
    differing = [c.id for c, a, b in zip(cuts, ours, theirs) if a != b]
    torch_wer = _pytorch_wers(exp_dir)
    summary = {"exported": exported["kinds"], "export_seconds": export_s,
               "onnxruntime_vs_pytorch_relative_error": exported["relative_error"],
               "steps": params["batch_idx_train"], "avg": avg, "utterances": len(cuts),
               "greedy_token_agreement": {"same": same, "total": len(cuts), "differing": differing},
               "pytorch_wer": torch_wer,
               "sherpa_onnx": {k: {kk: vv for kk, vv in v.items() if kk != "hyps"} for k, v in results.items()}}
    (exp_dir / "sherpa_onnx_summary.json").write_text(json.dumps(summary, indent=1))
    if record:
        import platform
        import onnxruntime
        import sherpa_onnx
        meta = {"device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
                          "sherpa-onnx 1 thread)",
                "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                             "sherpa_onnx": getattr(sherpa_onnx, "__version__", "?")},
                "command": (f"python -m recipes.synthetic.run{' --causal' if model.config.causal else ''} "
                            f"--stage export --exp-dir {exp_dir} --data-dir {data_dir}")}
        Path(record).parent.mkdir(parents=True, exist_ok=True)
        Path(record).write_text(json.dumps({**meta, **summary}, indent=1))
    line = ", ".join(f"{k} {v['wer']:.2f}%" for k, v in summary["sherpa_onnx"].items())
    print(f"[run] sherpa-onnx WER: {line}; PyTorch WER: {json.dumps(torch_wer)}; greedy token sequences "
          f"identical on {same}/{len(cuts)} utterances", flush=True)
    return summary
