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
    g.add_argument("--manifest-dir", default=None,
                   help="a recipe's prepared data: holds cuts_<split>.jsonl.gz (and musan_cuts.jsonl.gz)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--valid-split", default="dev", help="'' to skip validation")
    g.add_argument("--train-cuts", default=None,
                   help="your own lhotse cut manifest to train on (instead of --manifest-dir); cuts "
                        "without features get Fbank on the fly")
    g.add_argument("--valid-cuts", default=None, help="your own lhotse cut manifest for validation")
    g.add_argument("--bpe-model", required=True)
    g.add_argument("--max-duration", type=float, default=200.0, help="seconds of audio per batch per rank")
    g.add_argument("--num-buckets", type=int, default=30,
                   help="duration buckets (a maximum: fewer when the data cannot fill them)")
    g.add_argument("--num-workers", type=int, default=2)
    g.add_argument("--spec-aug", "--enable-spec-aug", type=str2bool, default=True)
    g.add_argument("--spec-aug-time-warp", "--spec-aug-time-warp-factor", type=int, default=80)
    g.add_argument("--on-the-fly-feats", type=str2bool, default=False)
    g.add_argument("--speed-perturb", type=str2bool, default=False, help="on the fly (needs --on-the-fly-feats)")
    g.add_argument("--enable-musan", type=str2bool, default=False,
                   help="mix MUSAN noise into training cuts (icefall's CutMix); reads "
                        "<manifest-dir>/musan_cuts.jsonl.gz unless --musan-cuts is given")
    g.add_argument("--musan-cuts", default=None, help="MUSAN cut manifest for noise mixing (implies --enable-musan)")
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
    g.add_argument("--causal", type=str2bool, default=False,
                   help="chunk-causal model for streaming (icefall's flag); overrides the model config")
    g.add_argument("--chunk-size", default="16,32,64,-1",
                   help="with --causal: chunk sizes at 50 Hz drawn per batch (-1 = full context)")
    g.add_argument("--left-context-frames", default="64,128,256,-1",
                   help="with --causal: left contexts at 50 Hz drawn per batch (-1 = unlimited)")
    g.add_argument("--use-attention-decoder", type=str2bool, default=False,
                   help="attention-decoder (AED) head; without a transducer, --ctc-loss-scale + "
                        "--attention-decoder-loss-scale must be 1 (icefall's rule)")
    g.add_argument("--attention-decoder-loss-scale", type=float, default=0.8)
    g.add_argument("--attention-decoder-dim", type=int, default=512)
    g.add_argument("--attention-decoder-num-layers", type=int, default=6)
    g.add_argument("--attention-decoder-attention-dim", type=int, default=512)
    g.add_argument("--attention-decoder-num-heads", type=int, default=8)
    g.add_argument("--attention-decoder-feedforward-dim", type=int, default=2048)
    g.add_argument("--use-cr-ctc", type=str2bool, default=False,
                   help="consistency-regularised CTC: two SpecAugment views per batch (SpecAugment "
                        "moves from the dataloader into the loss; --spec-aug 0 turns it off)")
    g.add_argument("--cr-loss-scale", type=float, default=0.2,
                   help="consistency loss scale, warmed up linearly over --warm-step batches")
    g.add_argument("--time-mask-ratio", type=float, default=2.5,
                   help="CR-CTC: time masks x this (count 10 -> int(10 r), max fraction 0.15 -> 0.15 r)")

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
    g.add_argument("--compile-backend", default="inductor",
                   help="with --compile: torch.compile backend (inductor; aot_eager traces the same graphs "
                        "without code generation)")
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
    if getattr(args, "use_cr_ctc", False) and not args.use_ctc:
        raise SystemExit("error: --use-cr-ctc 1 needs --use-ctc 1")
    if getattr(args, "use_attention_decoder", False) and not args.use_transducer and args.use_ctc:
        from zipformer_fast.asr import check_ctc_aed_scales
        try:
            check_ctc_aed_scales(args.ctc_loss_scale, args.attention_decoder_loss_scale)
        except ValueError as exc:
            raise SystemExit(f"error: {exc}") from exc
    if args.speed_perturb and not args.on_the_fly_feats:
        raise SystemExit("error: --speed-perturb needs --on-the-fly-feats 1 (or perturb at prepare time)")
    if args.max_duration <= 0:
        raise SystemExit("error: --max-duration must be > 0")
    if not args.manifest_dir and not args.train_cuts:
        raise SystemExit("error: give --manifest-dir (a recipe's prepared data) or --train-cuts (your own cut manifest)")
    if args.enable_musan and not (args.musan_cuts or args.manifest_dir):
        raise SystemExit("error: --enable-musan reads <manifest-dir>/musan_cuts.jsonl.gz: give --manifest-dir or --musan-cuts")


def int_tuple(text: str):
    """"16,32,-1" -> (16, 32, -1) (icefall's _to_int_tuple)."""
    try:
        return tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise SystemExit(f"error: expected comma-separated integers, got {text!r}") from None


def apply_causal_options(config, args):
    """The model config with --causal/--chunk-size/--left-context-frames applied (unchanged without --causal)."""
    if not args.causal:
        return config
    return config.replace(causal=True, chunk_size=int_tuple(args.chunk_size),
                          left_context_frames=int_tuple(args.left_context_frames))
