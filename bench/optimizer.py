"""Optimizer step time on Zipformer-M's parameter shapes (~65 M params, ~745 tensors, read from
tests/data/state_dict_M_transducer_ctc.tsv) for:
  extension  ScaledAdam, compiled multi-tensor step (csrc/)
  foreach    ScaledAdam, torch._foreach path
  reference  ScaledAdam, plain per-parameter loop
  stacked    icefall's strategy: bucket by shape, torch.stack, update, copy back (optim/stacked.py)
  adam       torch.optim.Adam(fused=True) (foreach where fused is unsupported): the floor
All ScaledAdam variants use clipping_scale=2.0 (the recipe). Gradients are fixed random tensors;
the timed region is optimizer.step() only. Median of --steps steps after --warmup steps
(CUDA events on GPU, perf_counter on CPU).

  python bench/optimizer.py [--device cpu|cuda] [--steps N] [--warmup N] [--impls a,b] [--smoke]
Writes long-format rows to bench/results/<device-name>/optimizer.{json,csv} (or --out DIR).
--smoke: 40 small tensors, 3 steps, for CI.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import pathlib
import platform
import re
import statistics
import sys
import time

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from zipformer_fast.optim import ScaledAdam  # noqa: E402
from zipformer_fast.optim.stacked import StackedScaledAdam  # noqa: E402

SHAPES_TSV = ROOT / "tests" / "data" / "state_dict_M_transducer_ctc.tsv"
IMPLS = ("extension", "foreach", "reference", "stacked", "adam")


def read_shapes(path=SHAPES_TSV):
    shapes = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        _, shape, _ = line.split("\t")
        shapes.append(() if shape == "scalar" else tuple(int(s) for s in shape.split("x")))
    return shapes


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or "cpu"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name} x{torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def make_params(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.05).to(device))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device)
        params.append(p)
    return params


def make_optimizer(impl, params, device):
    if impl == "stacked":
        return StackedScaledAdam(params, lr=0.045, clipping_scale=2.0), "stacked"
    if impl == "adam":
        try:
            opt = torch.optim.Adam(params, lr=1e-3, fused=True)
            opt.step()  # fused may be unsupported on this device: find out now
            return opt, "adam_fused"
        except (RuntimeError, ValueError):
            return torch.optim.Adam(params, lr=1e-3, foreach=True), "adam_foreach"
    return ScaledAdam(params, lr=0.045, clipping_scale=2.0, implementation=impl), impl


def time_steps(opt, device, steps, warmup):
    for _ in range(warmup):
        opt.step()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            opt.step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            opt.step()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 3 steps (CI)")
    ap.add_argument("--out", default=None, help="output dir (default bench/results/<device>)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    impls = [s for s in args.impls.split(",") if s]
    bad = [s for s in impls if s not in IMPLS]
    if bad:
        ap.error(f"unknown --impls {bad}; choose from {IMPLS}")
    shapes = read_shapes()
    if args.smoke:
        shapes = [s for s in shapes if (torch.Size(s).numel() <= 4096)][:40]
        args.steps, args.warmup = 3, 1
    logging.disable(logging.WARNING)  # the clipping-threshold log lines
    rows = []
    n_params = sum(torch.Size(s).numel() for s in shapes)
    for impl in impls:
        params = make_params(shapes, device)
        opt, label = make_optimizer(impl, params, device)
        times = time_steps(opt, device, args.steps, args.warmup)
        row = dict(benchmark="optimizer_step", impl=label, device=str(device),
                   device_name=device_name(device), dtype="float32", n_tensors=len(shapes),
                   n_params=n_params, steps=args.steps, warmup=args.warmup,
                   step_ms_median=statistics.median(times), step_ms_min=min(times),
                   threads=torch.get_num_threads(), torch=torch.__version__,
                   command=" ".join([os.path.basename(sys.executable), "bench/optimizer.py"] + (argv if argv is not None else sys.argv[1:])))
        rows.append(row)
        print(f"{label:14s} {row['step_ms_median']:10.2f} ms/step (median of {args.steps}, "
              f"{len(shapes)} tensors, {n_params / 1e6:.1f} M params, {device_name(device)})", flush=True)
        del opt, params
    out = pathlib.Path(args.out) if args.out else ROOT / "bench" / "results" / device_name(device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "optimizer.json").write_text(json.dumps(rows, indent=1))
    with open(out / "optimizer.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out / 'optimizer.json'} and .csv")
    return rows


if __name__ == "__main__":
    main()
