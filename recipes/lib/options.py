"""Command-line options of recipes/train.py (icefall's names and defaults where they exist)."""
from __future__ import annotations

import argparse


def str2bool(v) -> bool:
    if isinstance(v, bool):
        return v
    if str(v).lower() in ("1", "true", "yes", "y"):
        return True
    if str(v).lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (0/1/true/false), got {v!r}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train a Zipformer transducer and/or CTC model (single process or torchrun DDP).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--manifest-dir", required=True, help="holds cuts_<split>.jsonl.gz with features")
    g.add_argument("--train-split", default="train")
    g.add_argument("--valid-split", default="dev", help="'' to skip validation")
    g.add_argument("--bpe-model", required=True)
    g.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per batch per rank")
    g.add_argument("--num-buckets", type=int, default=30)
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--spec-aug", type=str2bool, default=True)
    g.add_argument("--spec-aug-time-warp", type=int, default=80)
    g.add_argument("--on-the-fly-feats", type=str2bool, default=False)
    g.add_argument("--speed-perturb", type=str2bool, default=False, help="on the fly (needs --on-the-fly-feats)")
    g.add_argument("--musan-cuts", default=None, help="MUSAN cut manifest for noise mixing (optional)")
    g.add_argument("--min-duration", type=float, default=1.0)
    g.add_argument("--max-utt-duration", type=float, default=20.0)

    g = p.add_argument_group("model")
    g.add_argument("--model-config", default="S", help="preset S/M/L/XS or a JSON file of ZipformerConfig fields")
    g.add_argument("--use-transducer", type=str2bool, default=True)
    g.add_argument("--use-ctc", type=str2bool, default=False)
    g.add_argument("--ctc-loss-scale", type=float, default=0.2)
    g.add_argument("--simple-loss-scale", type=float, default=0.5)
    g.add_argument("--prune-range", type=int, default=5)
    g.add_argument("--lm-scale", type=float, default=0.25)
    g.add_argument("--am-scale", type=float, default=0.0)
    g.add_argument("--warm-step", type=int, default=2000, help="loss-weight warm-up (batches)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--base-lr", type=float, default=None, help="default: icefall's value for the preset")
    g.add_argument("--lr-batches", type=float, default=7500)
    g.add_argument("--lr-epochs", type=float, default=3.5)
    g.add_argument("--lr-warmup-batches", type=float, default=500, help="Eden warmup_batches")
    g.add_argument("--lr-warmup-start", type=float, default=0.1, help="Eden warmup_start (icefall recipe: 0.1)")
    g.add_argument("--clipping-scale", type=float, default=2.0)
    g.add_argument("--optimizer", default="scaled_adam", choices=["scaled_adam", "adam"],
                   help="adam: torch.optim.Adam at --base-lr (a diagnostic baseline, not icefall)")
    g.add_argument("--ref-duration", type=float, default=600.0,
                   help="model schedules advance by batch * max_duration * world_size / ref_duration")
    g.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32",
                   help="fp16: autocast + GradScaler; bf16: autocast")
    g.add_argument("--num-epochs", type=int, default=30)
    g.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    g.add_argument("--max-minutes", type=float, default=0.0, help="stop after this wall time (0: no limit)")
    g.add_argument("--seed", type=int, default=42)

    g = p.add_argument_group("run")
    g.add_argument("--exp-dir", required=True)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda")
    g.add_argument("--backend", default="auto", choices=["auto", "triton", "reference"],
                   help="fused-op implementation (zipformer_fast.backend); auto = Triton on CUDA")
    g.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch default)")
    g.add_argument("--compile", type=str2bool, default=False,
                   help="torch.compile the encoder (fullgraph, dynamic shapes; input checks stay eager)")
    g.add_argument("--resume", default="auto",
                   help="auto: latest checkpoint in --exp-dir if any; none: start over; or a checkpoint path")
    g.add_argument("--save-every-n", type=int, default=4000)
    g.add_argument("--keep-last-k", type=int, default=30)
    g.add_argument("--average-period", type=int, default=200)
    g.add_argument("--log-interval", type=int, default=50)
    g.add_argument("--valid-interval", type=int, default=3000)
    g.add_argument("--tensorboard", type=str2bool, default=True)
    g.add_argument("--progress", type=str2bool, default=True, help="tqdm progress bar on rank 0")
    return p


def validate(args) -> None:
    if args.save_every_n < args.average_period or args.save_every_n % args.average_period:
        raise SystemExit(f"error: --save-every-n ({args.save_every_n}) must be a multiple of "
                         f"--average-period ({args.average_period}) (icefall's rule)")
    if not (args.use_transducer or args.use_ctc):
        raise SystemExit("error: at least one of --use-transducer / --use-ctc must be 1")
    if args.speed_perturb and not args.on_the_fly_feats:
        raise SystemExit("error: --speed-perturb needs --on-the-fly-feats 1 (or perturb at prepare time)")
    if args.max_duration <= 0:
        raise SystemExit("error: --max-duration must be > 0")
