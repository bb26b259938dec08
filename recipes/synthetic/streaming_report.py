"""The causal synthetic recipe's decoding and report (recipes.synthetic.run --causal): the trained
streaming model's test WER three ways, each with greedy search and modified beam search:

- full context: the whole utterance, no chunk mask (the model was also trained that way, chunk -1);
- simulated streaming: the whole utterance with the chunk mask of the chosen chunk / left context;
- real streaming: chunk by chunk with cached states (zipformer_fast.asr.streaming), many streams at once;

with the latency the chunk implies and the real-time factor of streaming decoding (decode compute
seconds / audio seconds). Every decode is an ordinary `python -m recipes.decode` command (printed).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from zipformer_fast.asr import LOOKAHEAD_FRAMES

NUM_DECODE_STREAMS = 50


def latency_ms(chunk_size: int) -> dict:
    """What a chunk of `chunk_size` frames at 50 Hz implies: the chunk itself, and the look-ahead
    past its end (13 feature frames at 10 ms). A frame waits for the rest of its chunk plus the
    look-ahead: chunk + look-ahead for the chunk's first frame, half the chunk on average."""
    chunk = chunk_size * 20
    lookahead = LOOKAHEAD_FRAMES * 10
    return {"chunk_ms": chunk, "lookahead_ms": lookahead, "max_ms": chunk + lookahead,
            "mean_ms": chunk / 2 + lookahead}


def decode_and_report(args, settings, data_dir: Path, exp_dir: Path, train_summary: dict, timings: dict,
                      t0: float) -> dict:
    from recipes import decode as decode_mod
    from recipes.synthetic.run import decode_argv

    C, L = args.stream_chunk_size, args.stream_left_context
    modes = {
        "full_context": dict(chunk_size=-1),
        "simulated_streaming": dict(chunk_size=C, left_context_frames=L),
        "real_streaming": dict(chunk_size=C, left_context_frames=L, streaming=1,
                               num_decode_streams=NUM_DECODE_STREAMS),
    }
    wer, details = {}, {}
    for mode, flags in modes.items():
        for method in ("greedy_search", "modified_beam_search"):
            dargv = decode_argv(data_dir, exp_dir, method, settings["decode"]["avg"], device=args.device,
                                threads=args.threads, backend=args.backend, **flags)
            print("[run] python -m recipes.decode " + " ".join(dargv), flush=True)
            t = time.time()
            r = decode_mod.main(dargv)["test"]
            timings[f"decode_{mode}_{method}_s"] = round(time.time() - t, 1)
            wer.setdefault(mode, {})[method] = round(r["wer"], 2)
            details[f"{mode}/{method}"] = r
    timings["total_s"] = round(time.time() - t0, 1)
    streaming = details["real_streaming/greedy_search"]
    summary = {
        "what": "synthetic recipe, causal Zipformer (model_tiny.json + --causal): test WER (%) three ways",
        "command": "python -m recipes.synthetic.run " + " ".join(args.argv),
        "device": _device_name(args.device), "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "training": {"steps": train_summary["batch_idx_train"], "train_s": timings.get("train_s"),
                     "max_minutes": args.train_minutes if args.train_minutes is not None else settings["train"].get("max_minutes"),
                     "chunk_size": settings["train"]["chunk_size"],
                     "left_context_frames": settings["train"]["left_context_frames"]},
        "decode": {"chunk_size": C, "left_context_frames": L, "avg": settings["decode"]["avg"],
                   "num_decode_streams": NUM_DECODE_STREAMS},
        "wer": wer,
        "latency": latency_ms(C),
        "streaming_rtf": {m: details[f"real_streaming/{m}"]["rtf"] for m in ("greedy_search", "modified_beam_search")},
        "streaming_audio_seconds": streaming["audio_seconds"],
        "timings": timings,
        "train_summary": {"batch_idx_train": train_summary["batch_idx_train"],
                          "loss_curve": train_summary.get("loss_curve")},
        "exp_dir": str(exp_dir.resolve()), "data_dir": str(data_dir.resolve()),
        "bpe_model": str((data_dir / "lang" / "bpe.model").resolve()),
    }
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "run_summary.json").write_text(json.dumps(summary, indent=1))
    if args.record:
        path = Path(args.record)
        if args.record == "auto":
            kind = "cuda" if summary["device"].startswith("cuda") else "cpu"
            path = Path(__file__).resolve().parents[2] / "bench" / "results" / kind / "streaming_synthetic.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({k: v for k, v in summary.items() if k != "train_summary"}, indent=1) + "\n")
        print(f"[run] recorded {path}", flush=True)
    lat = summary["latency"]
    print(f"[run] causal model after {summary['training']['steps']} steps; test WER greedy / modified beam: "
          + "; ".join(f"{mode} {w['greedy_search']:.2f}% / {w['modified_beam_search']:.2f}%" for mode, w in wer.items())
          + f" (chunk {C} = {lat['chunk_ms']} ms + {lat['lookahead_ms']} ms look-ahead, left context {L}); "
          f"streaming RTF {summary['streaming_rtf']['greedy_search']:.3f} greedy, "
          f"{summary['streaming_rtf']['modified_beam_search']:.3f} beam", flush=True)
    return summary


def _device_name(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({platform.processor() or platform.machine()})"
