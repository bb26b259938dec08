"""Sections on time: Table 2's parameters and FLOPs, encoder latency and memory against the project's
targets, the one-shot GPU run's log, the optimizer step and the kernel microbenchmarks."""
from __future__ import annotations

import re
from typing import Dict, List, Optional

from .common import (LINK_PREFIX, RESULTS, Doc, command, device_dirs, fmt, load_csv, load_json, num, recorded,
                     table, twins)

# The project's speed and memory targets, checked against the encoder rows of each device.
# (what, model, mode, metric, numerator backend, denominator backend, limit)
ENCODER_TARGETS = (
    ("Zipformer-L inference time, fused / reference", "zipformer-L", "infer", "time_ms", "triton", "reference", 0.50),
    ("Zipformer-L inference peak memory, fused / reference", "zipformer-L", "infer", "peak_mem_mb", "triton",
     "reference", 0.40),
    ("Zipformer-L inference time, fused / torch.compile of the reference", "zipformer-L", "infer", "time_ms",
     "triton", "compile", 1.00),
    ("Zipformer-M training step time, fused / reference", "zipformer-M", "train", "time_ms", "triton", "reference",
     0.60),
)
# What a results folder's name does not say.


def table2(doc: Doc) -> None:
    path, data = recorded("table2.json")
    if data is None:
        return
    meta = data.get("meta", {})
    doc.add("## Table 2: parameters and FLOPs\n")
    doc.add(f"Counted with {meta.get('counting', 'FlopCounterMode')} (torch {meta.get('torch', '?')}); the paper's "
            "figures beside ours. Parameters include the transducer (or, for `-ctc` rows, the CTC) head.\n")
    doc.commands([meta.get("command", "")])
    rows = [(r["model"], f"{r['params_m']:.2f}", f"{r['paper_params_m']:.1f}", f"{100 * r['params_rel_diff']:+.1f} %",
             f"{r['gflops_30s']:.1f}", f"{r['paper_gflops_30s']:.1f}", f"{100 * r['gflops_rel_diff']:+.1f} %",
             ("yes" if r["within_tolerance"] else "NO") + f" (±{100 * r['tolerance']:.0f} %)")
            for r in data["rows"]]
    doc.add(table(["model", "params (M)", "paper", "diff", "GFLOPs / 30 s", "paper", "diff", "within tolerance"],
                  rows, [False, True, True, True, True, True, True, False]))
    doc.files(p for p in (RESULTS / "table2.json", RESULTS / "table2.csv", RESULTS / "table2.md") if p.exists())


def _encoder_cases(rows: List[dict]) -> Dict[tuple, Dict[str, dict]]:
    cases: Dict[tuple, Dict[str, dict]] = {}
    for r in rows:
        cases.setdefault((r["model"], r["backend"], r["dtype"], r["mode"]), {})[r["metric"]] = r
    return cases


def _ratio(cases, model, mode, dtype, metric, num_backend, den_backend) -> Optional[float]:
    a = num(cases.get((model, num_backend, dtype, mode), {}).get(metric, {}).get("p50"))
    b = num(cases.get((model, den_backend, dtype, mode), {}).get(metric, {}).get("p50"))
    return None if a is None or not b else a / b


def encoder_latency(doc: Doc) -> None:
    paths = [d / "encoder_latency.json" for d in device_dirs() if (d / "encoder_latency.json").exists()]
    if not paths:
        return
    doc.add("## Encoder latency and peak memory (Figure 3 protocol)\n")
    doc.add("`bench/encoder_latency.py`: the encoder alone (`forward_encoder`), a batch of equal-length random "
            "fbank inputs; p50 [p20-p80] of the timed runs after warm-up (CUDA events on a GPU); peak memory "
            "is `torch.cuda.max_memory_allocated` on a GPU and a lower bound on the CPU; saved activations "
            "are the bytes saved for backward in a training step. Backends: `reference` (pure PyTorch), "
            "`triton` (the fused path), `compile` (torch.compile of the reference).\n")
    for path in paths:
        rows = load_json(path)
        first = rows[0]
        doc.add(f"### {first['device']}: batch {first['batch_size']} × {fmt(first['duration_s'])} s\n")
        doc.add(f"torch {first['torch']}, triton {first.get('triton', '-')}, threads: {first.get('threads', '?')}.\n")
        doc.commands(r["command"] for r in rows)
        cases = _encoder_cases(rows)
        static = {k[0]: v for k, v in cases.items() if k[3] == "static"}
        out = []
        for (model, backend, dtype, mode), m in cases.items():
            if mode == "static":
                continue
            s = static.get(model, {})
            t = m.get("time_ms")
            if "error" in m and t is None:
                timing = "failed"
            elif t is None:
                timing = "-"
            else:
                timing = f"{fmt(t['p50'])} [{fmt(t['p20'])}-{fmt(t['p80'])}]"
            out.append((model, fmt(s.get("params_m", {}).get("p50")), fmt(s.get("gflops_30s", {}).get("p50")),
                        backend, dtype, mode, timing, fmt(m.get("peak_mem_mb", {}).get("p50")),
                        fmt(m.get("saved_act_mb", {}).get("p50")), fmt(m.get("compile_s", {}).get("p50"))))
        doc.add(table(["model", "params (M)", "GFLOPs / 30 s", "backend", "dtype", "mode", "ms, p50 [p20-p80]",
                       "peak MB", "saved act. MB", "compile s"], out,
                      [False, True, True, False, False, False, True, True, True, True]))
        dtypes = sorted({r["dtype"] for r in rows if r["mode"] != "static"})
        targets = []
        for what, model, mode, metric, a, b, limit in ENCODER_TARGETS:
            for dtype in dtypes:
                ratio = _ratio(cases, model, mode, dtype, metric, a, b)
                met = "-" if ratio is None else ("yes" if (ratio < limit if limit == 1.0 else ratio <= limit) else "NO")
                targets.append((what, dtype, "not measured" if ratio is None else f"{ratio:.2f}", f"{limit:.2f}", met))
        if any(t[4] != "-" for t in targets):
            doc.add("Targets on this device (ratios of p50):\n")
            doc.add(table(["target", "dtype", "measured", "limit", "met"], targets, [False, False, True, True, False]))
        else:
            doc.add("No fused (`triton`) row on this device, so none of the speed and memory targets is measured here.\n")
        others = sorted(p for p in path.parent.glob("*.csv")
                        if p.name not in ("encoder_latency.csv", "kernels.csv", "optimizer.csv"))
        for extra in others:
            failed = [r for r in load_csv(extra) if r.get("metric") == "error"]
            if failed:
                doc.add(f"`{extra.name}` records an attempt that failed: "
                        + "; ".join(f"{r['model']} {r['backend']} {r['dtype']} {r['mode']}" for r in failed)
                        + f" (command: `{command(failed[0]['command'])}`).\n")
            else:
                doc.add(f"`{extra.name}` records an attempt that left no timing row (only the model's static rows); "
                        "the logs below say why.\n")
        figure = path.parent / "figure3.png"
        if figure.exists():
            doc.claim(figure)
            doc.add(f"![Figure 3, {first['device']}]({LINK_PREFIX}{figure.relative_to(RESULTS).as_posix()})\n")
        doc.files([*twins(path), *others])


def gpu_check_logs(doc: Doc) -> None:
    logs = [d / "gpu_check.log" for d in device_dirs() if (d / "gpu_check.log").exists()]
    for log in logs:
        lines = log.read_text(errors="replace").splitlines()
        start = next((i for i, line in enumerate(lines) if line.startswith("== gpu_check summary")), None)
        doc.add(f"## One-shot GPU run: `bench/gpu_check.sh` on {log.parent.name}\n")
        if start is None:
            doc.add("The log has no summary block (the run did not reach it).\n")
        else:
            stages = []
            for line in lines[start + 2:]:
                m = re.match(r"^(\S+)\s+(.*?)\s+(\d+)$", line.strip())
                if m:
                    stages.append(m.groups())
            doc.add(lines[start].strip("= ").strip() + ". Each stage ran under its own time limit; a stage "
                    "cut by its limit or the run's deadline left partial or no rows:\n")
            doc.add(table(["stage", "status", "seconds"], stages, [False, False, True]))
        logs_here = sorted(log.parent.glob("*.log"))
        empty = [p.name for p in logs_here if p.stat().st_size == 0]
        if empty:
            doc.add("Empty logs (the stage was cut before it printed): " + ", ".join(f"`{n}`" for n in empty) + ".\n")
        doc.files(logs_here)
        env = log.parent / "env.log"
        if env.exists():
            doc.claim(env)


def optimizer(doc: Doc) -> None:
    paths = [d / "optimizer.json" for d in device_dirs() if (d / "optimizer.json").exists()]
    if not paths:
        return
    doc.add("## ScaledAdam optimizer step\n")
    doc.add("`bench/optimizer.py`: one step over Zipformer-M's parameter tensors. Implementations: `extension` "
            "(the multi-tensor C++/CUDA extension), `foreach` (`torch._foreach_*`), `reference` (per-parameter "
            "loop), `stacked` (icefall-style stack-and-copy) and `adam_fused` (`torch.optim.Adam(fused=True)`, a "
            "floor: plain Adam's work in the fewest passes).\n")
    for path in paths:
        rows = load_json(path)
        first = rows[0]
        doc.add(f"### {first['device_name']} ({first['device']}, {first.get('threads', '?')} threads, "
                f"torch {first['torch']})\n")
        doc.commands(r.get("command", "") for r in rows)
        doc.add(f"{first['n_tensors']} tensors, {first['n_params']:,} parameters, {first['dtype']}, "
                f"{first['steps']} timed steps after {first['warmup']} warm-up.\n")
        doc.add(table(["implementation", "ms, median", "ms, min"],
                      [(r["impl"], fmt(r["step_ms_median"]), fmt(r["step_ms_min"])) for r in rows], [False, True, True]))
        doc.files(twins(path))


def kernels(doc: Doc) -> None:
    paths = [d / "kernels.json" for d in device_dirs() if (d / "kernels.json").exists()]
    for path in paths:
        rows = load_json(path)
        first = rows[0]
        doc.add(f"## Kernel microbenchmarks on {first['device']}\n")
        doc.add("`bench/kernels.py`: each fused op (`triton`) against its reference (eager PyTorch) and "
                "torch.compile of the reference, forward, backward and both (`full`); p50 time and the fraction "
                "of peak memory bandwidth its bytes imply. The `copy` row is the device's achievable floor.\n")
        doc.add(f"torch {first['torch']}, triton {first.get('triton', '-')}.\n")
        doc.commands(r["command"] for r in rows)
        by: Dict[tuple, Dict[str, dict]] = {}
        order: List[tuple] = []
        for r in rows:
            key = (r["op"], r["shape"], r["dtype"], r["mode"], r["provider"])
            if key not in by:
                order.append(key)
            by.setdefault(key, {})[r["metric"]] = r
        out = []
        for key in order:
            m = by[key]
            out.append((key[0], key[1], key[2], key[3], key[4], fmt(m.get("ms", {}).get("p50")),
                        fmt(m.get("GB_s", {}).get("p50")), fmt(m.get("pct_peak_bw", {}).get("p50")),
                        fmt(m.get("peak_MB", {}).get("p50"))))
        doc.add(table(["op", "shape", "dtype", "pass", "provider", "ms, p50", "GB/s", "% of peak bandwidth",
                       "peak MB"], out, [False, False, False, False, False, True, True, True, True]))
        ops = sorted({k[0] for k in order} - {"copy"})
        doc.add(f"Ops present: {', '.join(ops)}. Ops of the fused path with no row here were not reached "
                "in this run.\n")
        doc.files(twins(path))
