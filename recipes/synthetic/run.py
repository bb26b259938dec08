"""The synthetic recipe end to end: prepare (espeak-ng corpus, Fbank, tokenizer) -> train a small
Zipformer transducer (+ CTC head) -> decode the test set -> print the WER.

    python -m recipes.synthetic.run --device auto            # the full recipe (14 min of training, ~16 min in all, 2 CPU cores)
    python -m recipes.synthetic.run --quick                  # CI smoke run: tiny corpus, a few dozen steps
    python -m recipes.synthetic.run --causal --device auto   # a streaming (chunk-causal) model, 9 min of training
    python -m recipes.synthetic.run --heads ctc_aed --train-minutes 4   # another head combination
    python -m recipes.synthetic.run --stage export           # deployment only, on the exp dir a run left:
                                                             # ONNX export + sherpa-onnx decoding of the test wavs

--causal trains with icefall's streaming flags (--causal 1 --chunk-size 16,32,64,-1
--left-context-frames 64,128,256,-1) and reports the WER three ways: full context, simulated
streaming (whole utterance, chunk mask) and real streaming (chunk by chunk with cached states), at
--stream-chunk-size / --stream-left-context, with the latency the chunk implies and the real-time
factor of streaming decoding. Results also go to bench/results/<device>/streaming_synthetic.json
with --record.

--heads picks the heads (default transducer_ctc: transducer + CTC, decoded with the transducer):
ctc (CTC only), ctc_aed (CTC + attention decoder, icefall's CTC/AED scales 0.1 / 0.9, a small
2-layer 128-dim decoder to fit the tiny encoder), cr_ctc (CR-CTC) and cr_ctc_aed. The CTC heads are
decoded with CTC greedy and prefix beam search; the AED heads also with attention-decoder
rescoring of the CTC n-best, whose scale is chosen on the dev set.

Everything it runs is an ordinary step (recipes.synthetic.prepare, recipes.train, recipes.decode);
the exact command lines are printed so each can be rerun alone. Results go to
<exp-dir>/run_summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List

# Corpus sizes and training settings. The full run trains for a fixed wall-time budget (minutes),
# the quick run for a fixed number of steps.
# Why these settings (measured on the 2-core CPU, see recipes/synthetic/README.md): escaping the blank plateau takes
# ~400 optimizer steps at 40 s batches and ~600 at 20 s, while a 20 s step costs 0.28 s against
# 0.52 s at 40 s: the smaller batch leaves the plateau sooner on the clock and buys more steps. The schedules keep icefall's
# M-recipe pace per step: ref_duration 3 makes the model's batch count advance 20/3 = 6.7x per step
# as icefall's (1000 s x 4 GPUs)/600; Eden's lr_batches 1000 and the loss warm-up (500 steps) are
# sized for the ~2100 steps that fit in 14 minutes; the LR warm-up is 50 steps. Decoding uses the
# running average since the third-newest checkpoint (avg 3: the last ~600 steps), chosen on the dev
# set of two runs: dev WER 2.5 % / 4.7 % with avg 3, against 8.9 % / 12.7 % for the last 250 steps
# only (avg 1) and 7.2 % / 8.9 % since step ~600 (avg 6).
FULL = dict(
    prepare=dict(train_sentences=1500, train_repeats=2, dev_sentences=50, test_sentences=100,
                 test_repeats=2, speed_perturb=0, vocab_size=128),
    train=dict(max_duration=20, num_buckets=10, base_lr=0.05, lr_batches=1000, lr_epochs=10,
               lr_warmup_batches=50, warm_step=500, ref_duration=3, average_period=25,
               save_every_n=250, log_interval=50, valid_interval=250, spec_aug_time_warp=20,
               use_ctc=1, max_minutes=14.0, num_epochs=100),
    decode=dict(avg=3),
)
QUICK = dict(
    prepare=dict(train_sentences=60, train_repeats=2, dev_sentences=6, test_sentences=8,
                 test_repeats=1, speed_perturb=0, vocab_size=64),
    train=dict(max_duration=20, num_buckets=2, base_lr=0.05, lr_batches=300, lr_epochs=10,
               lr_warmup_batches=10, warm_step=20, ref_duration=1, average_period=5,
               save_every_n=10, log_interval=5, valid_interval=1000, spec_aug_time_warp=20,
               use_ctc=1, max_steps=60, num_epochs=100),
    decode=dict(avg=1),
)
MODEL_CONFIG = str(Path(__file__).resolve().parent / "model_tiny.json")
# The streaming recipe: icefall's streaming training flags and 9 minutes of training, so that
# `make run` (both recipes) stays near half an hour. On an idle 2-core CPU that is ~1300-1900 steps
# at the non-causal recipe's 0.28-0.40 s/step. The causal model leaves the blank plateau about as
# late (the recorded run's loss per frame: 0.67 at step 600, 0.54 at 750, 0.27 at 1500, where it
# decodes at 20.5 % beam WER; bench/results/cpu/streaming_synthetic.json, 22 minutes on a loaded
# machine). A 9-minute run on an idle machine has not been measured.
CAUSAL_TRAIN = dict(causal=1, chunk_size="16,32,64,-1", left_context_frames="64,128,256,-1", max_minutes=9.0)
CAUSAL_QUICK_TRAIN = dict(causal=1, chunk_size="16,32,64,-1", left_context_frames="64,128,256,-1")

# The attention decoder sized for the tiny encoder (icefall's default is 6 x 512, 8 heads, FF 2048).
AED_TINY = dict(use_attention_decoder=1, attention_decoder_dim=128, attention_decoder_num_layers=2,
                attention_decoder_attention_dim=128, attention_decoder_num_heads=4,
                attention_decoder_feedforward_dim=512, ctc_loss_scale=0.1, attention_decoder_loss_scale=0.9)
CTC_ONLY = dict(use_transducer=0, use_ctc=1)
CR_CTC = dict(use_cr_ctc=1, cr_loss_scale=0.2, time_mask_ratio=2.5)
CTC_METHODS = ("ctc_greedy_search", "ctc_prefix_beam_search")
RESCORING = "ctc_prefix_beam_search_attention_decoder_rescoring"
ATTENTION_SCALES = (0.1, 0.3, 0.5, 1.0, 2.0)
# heads -> (train flag overrides, decoding methods)
HEADS = {
    "transducer_ctc": ({}, ("greedy_search", "modified_beam_search")),
    "ctc": (CTC_ONLY, CTC_METHODS),
    "ctc_aed": ({**CTC_ONLY, **AED_TINY}, CTC_METHODS + (RESCORING,)),
    "cr_ctc": ({**CTC_ONLY, **CR_CTC}, CTC_METHODS),
    "cr_ctc_aed": ({**CTC_ONLY, **AED_TINY, **CR_CTC}, CTC_METHODS + (RESCORING,)),
}


def _flags(d: Dict) -> List[str]:
    out = []
    for k, v in d.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def train_argv(data_dir, exp_dir, settings: Dict, **overrides) -> List[str]:
    """recipes.train's command line for a prepared corpus (tests call it with small overrides)."""
    data_dir = Path(data_dir)
    base = dict(manifest_dir=data_dir / "manifests", bpe_model=data_dir / "lang" / "bpe.model",
                exp_dir=exp_dir, model_config=MODEL_CONFIG, num_workers=0, tensorboard=0)
    return _flags({**base, **settings, **overrides})


def decode_argv(data_dir, exp_dir, method: str, avg: int, **overrides) -> List[str]:
    data_dir = Path(data_dir)
    base = dict(manifest_dir=data_dir / "manifests", bpe_model=data_dir / "lang" / "bpe.model",
                exp_dir=exp_dir, decoding_method=method, avg=avg)
    return _flags({**base, **overrides}) + ["--splits", "test"]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI smoke run (tiny corpus, 60 steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="default: data/synthetic[-quick]")
    p.add_argument("--exp-dir", default=None, help="default: exp/synthetic[-quick]")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"],
                   help="fused-op implementation; auto = Triton kernels on CUDA, PyTorch on CPU")
    p.add_argument("--train-minutes", type=float, default=None, help="override the training time budget")
    p.add_argument("--train-steps", type=int, default=None, help="override the step limit (--quick: 60)")
    p.add_argument("--heads", default="transducer_ctc", choices=list(HEADS),
                   help="which heads to train (and how to decode them)")
    p.add_argument("--resume", action="store_true",
                   help="continue the training in --exp-dir (default: start over, deleting it)")
    p.add_argument("--causal", action="store_true", help="train a streaming model; decode three ways")
    p.add_argument("--stream-chunk-size", type=int, default=32, help="with --causal: chunk at 50 Hz (32 = 640 ms)")
    p.add_argument("--stream-left-context", type=int, default=128, help="with --causal: left context at 50 Hz")
    p.add_argument("--skip-train", action="store_true", help="decode the model already in --exp-dir")
    p.add_argument("--record", default=None,
                   help="with --causal: also write the streaming summary to this JSON file")
    p.add_argument("--stage", default="all", choices=["all", "export"],
                   help="export: only the deployment stage (ONNX export + sherpa-onnx decoding) on the "
                        "model already in --exp-dir; all: prepare, train, decode, then (full run) export")
    p.add_argument("--sherpa-record", default=None, help="also write the sherpa-onnx summary to this JSON file")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)

    from recipes import decode as decode_mod
    from recipes import train as train_mod
    from recipes.synthetic import prepare as prepare_mod

    s = QUICK if args.quick else FULL
    suffix = "-quick" if args.quick else ""
    data_dir = Path(args.data_dir or f"data/synthetic{suffix}")
    head_flags, methods = HEADS[args.heads]
    heads_suffix = "" if args.heads == "transducer_ctc" else f"-{args.heads}"
    exp_dir = Path(args.exp_dir or f"exp/synthetic{'-causal' if args.causal else ''}{heads_suffix}{suffix}")
    if args.causal:
        if args.heads != "transducer_ctc":
            sys.exit("error: --causal trains the default heads (streaming decodes with the transducer)")
        s = dict(s, train={**s["train"], **(CAUSAL_QUICK_TRAIN if args.quick else CAUSAL_TRAIN)})
    if args.stage == "export":
        return _deploy(args, s, data_dir, exp_dir)
    if not args.resume and not args.skip_train and exp_dir.exists():
        import shutil
        shutil.rmtree(exp_dir)
    timings = {}
    t0 = time.time()

    prep = _flags({"data_dir": data_dir, **s["prepare"]})
    print("[run] python -m recipes.synthetic.prepare " + " ".join(prep), flush=True)
    try:
        prepare_mod.prepare(prepare_mod.get_parser().parse_args(prep))
    except RuntimeError as exc:
        sys.exit(f"error: {exc}")
    timings["prepare_s"] = round(time.time() - t0, 1)

    train_settings = {**s["train"], **head_flags}
    if args.train_minutes is not None:
        train_settings["max_minutes"] = args.train_minutes
    if args.train_steps is not None:
        train_settings["max_steps"] = args.train_steps
    targv = train_argv(data_dir, exp_dir, train_settings, device=args.device, threads=args.threads,
                       backend=args.backend)
    print("[run] python -m recipes.train " + " ".join(targv), flush=True)
    t1 = time.time()
    if args.skip_train:
        from recipes.lib import checkpoint as ckpt_io
        newest = ckpt_io.load(ckpt_io.step_checkpoints(exp_dir)[0])
        train_summary = {"batch_idx_train": newest["params"]["batch_idx_train"], "loss_curve": None}
    else:
        train_summary = train_mod.main(targv)
    timings["train_s"] = round(time.time() - t1, 1)
    if args.causal:
        from recipes.synthetic import streaming_report
        summary = streaming_report.decode_and_report(args, s, data_dir, exp_dir, train_summary, timings, t0)
        if not args.quick:
            summary["sherpa_onnx"] = _deploy(args, s, data_dir, exp_dir)
        return summary

    results, chosen = {}, {}
    for method in methods:
        dargv = decode_argv(data_dir, exp_dir, method, s["decode"]["avg"], device=args.device,
                            threads=args.threads, backend=args.backend)
        if method == RESCORING:  # the scale is chosen on dev, then reported on test
            dargv = dargv[:-2] + ["--splits", "dev", "test", "--attention-scales",
                                  *map(str, ATTENTION_SCALES)]
        print("[run] python -m recipes.decode " + " ".join(dargv), flush=True)
        t2 = time.time()
        out = decode_mod.main(dargv)
        if method == RESCORING:
            names = [f"{method}-attention_scale_{a:g}" for a in ATTENTION_SCALES]
            best = min(names, key=lambda n: (out[f"dev/{n}"]["wer"], names.index(n)))
            chosen[method] = {"attention_scale": float(best.rsplit("_", 1)[1]),
                              "dev_wer": {n: round(out[f"dev/{n}"]["wer"], 2) for n in names},
                              "test_wer_all_scales": {n: round(out[f"test/{n}"]["wer"], 2) for n in names}}
            results[method] = out[f"test/{best}"]
        else:
            results[method] = out["test"]
        timings[f"decode_{method}_s"] = round(time.time() - t2, 1)
    timings["total_s"] = round(time.time() - t0, 1)

    summary = {"quick": args.quick, "heads": args.heads, "timings": timings,
               "steps": train_summary["batch_idx_train"],
               "loss_curve": train_summary["loss_curve"],
               "wer": {m: round(r["wer"], 2) for m, r in results.items()},
               "settings": {**s, "train": train_settings}, "model_config": MODEL_CONFIG,
               "threads": args.threads or None,
               "cpu_count": os.cpu_count()}
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / "run_summary.json").write_text(json.dumps(summary, indent=1))
    if chosen:
        summary["attention_rescoring"] = chosen
    wers = ", ".join(f"{m} {w:.2f}%" for m, w in summary["wer"].items())
    print(f"[run] test WER: {wers} after {summary['steps']} steps; times {json.dumps(timings)}", flush=True)
    if not args.quick and args.heads == "transducer_ctc":  # sherpa-onnx runs transducers here
        summary["sherpa_onnx"] = _deploy(args, s, data_dir, exp_dir)
    return summary


def _deploy(args, s: Dict, data_dir: Path, exp_dir: Path) -> dict:
    """ONNX export + sherpa-onnx decoding of the test wavs (recipes/synthetic/deploy.py)."""
    from recipes.synthetic import deploy
    chunk = (args.stream_chunk_size, args.stream_left_context) if args.causal else (None, None)
    return deploy.export_and_decode(data_dir, exp_dir, s["decode"]["avg"], chunk_size=chunk[0],
                                    left_context_frames=chunk[1], record=args.sherpa_record)


if __name__ == "__main__":
    main()
