"""Optimizer step time on Zipformer-M's parameter shapes (~65 M params, ~745 tensors, read from
tests/data/state_dict_M_transducer_ctc.tsv) for:
  extension  ScaledAdam, compiled multi-tensor step (csrc/)
  foreach    ScaledAdam, torch._foreach path
  reference  ScaledAdam, plain per-parameter loop
  stacked    icefall's strategy: bucket by shape, torch.stack, update, copy back
             (bench/stacked_scaled_adam.py)
  adam       torch.optim.Adam(fused=True) (foreach where fused is unsupported): the floor
All ScaledAdam variants use clipping_scale=2.0 (the recipe). Gradients are fixed random tensors;
the timed region is optimizer.step() only. Median of --steps steps after --warmup steps
(CUDA events on GPU, perf_counter on CPU).

  python bench/optimizer.py [--device cpu|cuda] [--steps N] [--warmup N] [--impls a,b] [--smoke]
Writes long-format rows (with device, versions, command, UTC time) to <out-dir>/optimizer.{json,csv}
(default bench/results/<device>/).
--smoke: 40 small tensors, 3 steps, for CI.
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import statistics
import sys

if __package__ in (None, ""):  # run as `python bench/optimizer.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import (ROOT, ResultTable, add_out_dir_argument, device_name, pick_device,  # noqa: E402
                           provenance, results_dir, time_calls)
from bench.stacked_scaled_adam import StackedScaledAdam  # noqa: E402
from zipformer_fast.optim import ScaledAdam  # noqa: E402

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 3 steps (CI)")
    add_out_dir_argument(ap)
    args = ap.parse_args(argv)
    device = pick_device(args.device)
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
    meta = provenance(__file__, argv, device)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    for impl in impls:
        params = make_params(shapes, device)
        opt, label = make_optimizer(impl, params, device)
        times = time_calls(opt.step, device, args.warmup, args.steps)
        row = dict(benchmark="optimizer_step", impl=label, dtype="float32", n_tensors=len(shapes),
                   n_params=n_params, steps=args.steps, warmup=args.warmup,
                   step_ms_median=statistics.median(times), step_ms_min=min(times), **meta)
        rows.append(row)
        print(f"{label:14s} {row['step_ms_median']:10.2f} ms/step (median of {args.steps}, "
              f"{len(shapes)} tensors, {n_params / 1e6:.1f} M params, {device_name(device)})", flush=True)
        del opt, params
    table = ResultTable(results_dir(device, args.out_dir), "optimizer")
    table.add(*rows)
    print(f"wrote {table.json_path} and .csv")
    return rows


if __name__ == "__main__":
    main()
