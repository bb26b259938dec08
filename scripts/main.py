"""The project's main job (`make run`): build icefall's Zipformer S/M/L as zipformer_fast models and
report what can be checked on this machine.

1. Parameter table: S/M/L transducer and transducer+CTC counts vs icefall / the paper.
2. Encoder FLOPs for a 30 s utterance (3000 frames), counted on the meta device, vs Table 2.
3. A timed forward pass of Zipformer-M (batch 2 x 10 s; on CUDA if present, else CPU).
Everything printed is measured in this run.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.flops import count_encoder_flops  # noqa: E402
from bench.harness import time_calls  # noqa: E402
from bench.paper import ICEFALL_GFLOPS, PAPER  # noqa: E402
from zipformer_fast import get_backend  # noqa: E402
from zipformer_fast.asr.model import AsrModel  # noqa: E402
from zipformer_fast.config import ZipformerConfig  # noqa: E402

ICEFALL_PARAMS = {"S": (23_285_615, 23_414_115), "M": (65_549_011, 65_805_511), "L": (148_439_574, 148_824_074)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="utterance length for the timed forward")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args(argv)

    print("== Parameters (vocab 500) ==")
    print(f"{'size':4} {'transducer':>12} {'icefall':>12} {'paper':>7} {'+CTC':>12} {'icefall':>12}")
    models = {}
    for size in ("S", "M", "L"):
        with torch.device("meta"):
            model = AsrModel(ZipformerConfig.preset(size), use_transducer=True, use_ctc=True)
        models[size] = model
        total = sum(p.numel() for p in model.parameters())
        trans = total - sum(p.numel() for p in model.ctc_output.parameters())
        ref_t, ref_c = ICEFALL_PARAMS[size]
        print(f"{size:4} {trans:12,} {ref_t:12,} {PAPER[f'zipformer-{size}'].params_m:6.1f}M {total:12,} {ref_c:12,}"
              f"  {'OK' if (trans, total) == (ref_t, ref_c) else 'MISMATCH'}")

    print("\n== Encoder GFLOPs, one 30 s utterance (Conv-Embed + encoder, 2 FLOPs/MAC) ==")
    print(f"{'size':4} {'ours':>8} {'icefall FlopCounter':>20} {'paper (DeepSpeed)':>18}")
    for size, model in models.items():
        name = f"zipformer-{size}"
        g = count_encoder_flops(model, seconds=30.0) / 1e9
        print(f"{size:4} {g:8.2f} {ICEFALL_GFLOPS[name]:20.1f} {PAPER[name].gflops_30s:18.1f}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    frames = int(args.seconds * 100)
    print(f"\n== Zipformer-M forward, batch {args.batch} x {args.seconds:g} s ({frames} frames), {device}, "
          f"backend {get_backend()!r} ==")
    torch.manual_seed(0)
    model = AsrModel(ZipformerConfig.preset("M"), use_transducer=True).to(device).eval()
    x = torch.randn(args.batch, frames, 80, device=device)
    lens = torch.full((args.batch,), frames, dtype=torch.int64, device=device)
    outputs = []
    with torch.no_grad():
        times = time_calls(lambda: outputs.append(model.forward_encoder(x, lens)), device, warmup=0,
                           iters=args.repeats + 1)
    out, out_lens = outputs[-1]
    print(f"output {tuple(out.shape)}, lengths {out_lens.tolist()}")
    print(f"forward time: first {times[0]:.0f} ms, then {min(times[1:]):.0f} ms (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
