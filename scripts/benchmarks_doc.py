"""Write docs/benchmarks.md from the recorded results in bench/results/ (no figure typed by hand).

    python scripts/benchmarks_doc.py            # rewrite docs/benchmarks.md
    python scripts/benchmarks_doc.py --check    # exit 1 when docs/benchmarks.md is out of date
    python scripts/benchmarks_doc.py --output /tmp/benchmarks.md

One section per family of result files (Table 2, encoder latency, optimizer step, kernels, memory
saved for backward, host overhead and launch counts, torch.compile, ptxas, the recipes' runs), each
with the device, the command that produced it, the numbers as tables and the caveats the files
themselves record (their "note", "caveat" and "method" fields, quoted verbatim). A file no family
claims is listed at the end with its top-level fields, so nothing recorded goes unmentioned.

Reads the JSON/CSV/log files directly and imports nothing from bench/ (whose scripts change
independently of this page). The output depends only on the files' contents: sorted walks, no
clock. Absolute checkout prefixes in recorded commands (/work/<tree>/) are dropped, so the
commands read relative to the repository root.
"""
from __future__ import annotations

import argparse
import csv
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUTPUT = ROOT / "docs" / "benchmarks.md"
LINK_PREFIX = "../bench/results/"  # from docs/ to bench/results/

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
FOLDER_NOTES = {
    "NVIDIA_H100_80GB_HBM3": "the only GPU on record: one `bench/gpu_check.sh` run cut by its deadline, and an "
                             "optimizer run before it.",
    "cpu": "the project's 2-core x86_64 CI machine, often shared with other work while measuring (the records "
           "say when).",
    "AMD_EPYC_x2t": "a 2-core x86_64 machine named by its CPU (the optimizer benchmark's CPU run).",
    "ptxas": "ahead-of-time compiles of the Triton kernels; no device involved.",
}
LAUNCH_TARGETS = {"inference_ratio": 0.40, "training_ratio": 0.60}  # fused / reference launches per step


# ------------------------------------------------------------------------------------------ helpers
def num(v) -> Optional[float]:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if f != f else f


def fmt(v, digits: int = 3) -> str:
    """A number with about `digits` significant digits and no exponent unless it is tiny."""
    f = num(v)
    if f is None:
        return "-" if v is None or v == "" else str(v)
    if isinstance(v, bool):
        return str(v)
    if f == int(f) and abs(f) < 1e6:
        return str(int(f))
    if f != 0 and abs(f) < 1e-3:
        return f"{f:.2g}"
    for limit, spec in ((100, ".0f"), (10, ".1f"), (1, ".2f")):
        if abs(f) >= limit:
            return format(f, spec)
    return format(f, f".{digits}f")


def wer(v) -> str:
    """A WER in percent as recorded (two decimals)."""
    f = num(v)
    return "-" if f is None else f"{f:.2f}"


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Sequence[bool] = ()) -> str:
    align = ["---:" if (i < len(right) and right[i]) else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command(text: str) -> str:
    """A recorded command, relative to the repository root."""
    return re.sub(r"/work/[\w.-]+/", "", str(text)).strip()


def quote(text: str) -> str:
    return "> " + " ".join(str(text).split()) + "\n"


class Doc:
    def __init__(self):
        self.parts: List[str] = []
        self.claimed: set = set()

    def add(self, text: str = "") -> None:
        self.parts.append(text if text.endswith("\n") else text + "\n")

    def claim(self, path: Path) -> Path:
        self.claimed.add(path)
        return path

    def link(self, path: Path) -> str:
        rel = path.relative_to(RESULTS).as_posix()
        return f"[`{rel}`]({LINK_PREFIX}{rel})"

    def files(self, paths: Iterable[Path]) -> None:
        paths = [self.claim(p) for p in paths]
        if paths:
            self.add("Files: " + ", ".join(self.link(p) for p in paths) + ".\n")

    def commands(self, cmds: Iterable[str]) -> None:
        cmds = sorted({command(c) for c in cmds if c})
        if cmds:
            self.add("Command" + ("s" if len(cmds) > 1 else "") + ":\n\n```\n" + "\n".join(cmds) + "\n```\n")

    def caveats(self, record: dict, keys: Sequence[str] = ("note", "caveat", "method")) -> None:
        for key in keys:
            if isinstance(record, dict) and record.get(key):
                self.add(f"Recorded {key}:\n\n" + quote(record[key]))


def load_json(path: Path):
    return json.loads(path.read_text())


def load_csv(path: Path) -> List[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def recorded(rel: str) -> Tuple[Path, Optional[dict]]:
    """bench/results/<rel> and its parsed JSON, or None where it was not recorded."""
    path = RESULTS / rel
    return path, (load_json(path) if path.exists() else None)


def device_dirs() -> List[Path]:
    return sorted(p for p in RESULTS.iterdir() if p.is_dir())


def twins(path: Path) -> List[Path]:
    """A JSON file and its CSV twin (same stem), those that exist."""
    return [p for p in (path.with_suffix(".json"), path.with_suffix(".csv")) if p.exists()]


# ------------------------------------------------------------------------------------- sections
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


def saved_bytes(doc: Doc) -> None:
    cpu = RESULTS / "cpu"
    simple = sorted(p for p in cpu.glob("saved_bytes_*.json") if "breakdown" not in p.name) if cpu.exists() else []
    breakdown = sorted(cpu.glob("saved_bytes_breakdown_*.json")) if cpu.exists() else []
    if not simple and not breakdown:
        return
    doc.add("## Memory saved for backward (CPU, counted offline)\n")
    doc.add("Bytes the autograd graph keeps for backward in one training forward (saved_tensors_hooks, each "
            "storage once, parameters excluded), fp32, on fake tensors unless stated: a property of the "
            "code, not of a device.\n")
    rows = []
    for p in simple:
        d = load_json(p)
        if "MiB" in d:
            ref = d["MiB"].get("reference/auto")
            for k, v in d["MiB"].items():
                ratio = d.get("over_reference", {}).get(k, (v / ref) if ref else None)
                rows.append((p.name, f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}", k, fmt(v),
                             "-" if ratio is None else f"{ratio:.2f}", command(d["command"])))
        else:
            what = f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}, attention {d.get('attention', '?')}"
            rows.append((p.name, what, "reference", fmt(d["reference_MiB"]), "1.00", command(d["command"])))
            rows.append((p.name, what, "fused", fmt(d["triton_MiB"]), f"{d['triton_over_reference']:.2f}",
                         command(d["command"])))
    doc.add(table(["file", "case", "backend / attention mode", "MiB", "fused / reference", "command"], rows,
                  [False, False, False, True, True, False]))
    for p in simple:
        d = load_json(p)
        if d.get("sweep"):
            ratios = [s["triton_over_reference"] for s in d["sweep"]]
            seeds = ", ".join(str(x) for x in sorted({s["seed"] for s in d["sweep"]}))
            counts = ", ".join(fmt(x) for x in sorted({s["batch_count"] for s in d["sweep"]}))
            doc.add(f"`{p.name}` sweeps seeds {seeds} × batch counts {counts} (which Balancers, Whitens "
                    f"and layer skips fire): fused / reference from {min(ratios):.2f} to {max(ratios):.2f}.\n")
    for p in breakdown:
        d = load_json(p)
        doc.add(f"### Who saves what: `{p.name}`\n")
        doc.add(f"{d['preset']}, {fmt(d['seconds'])} s, batch {d['batch']}, attention mode "
                f"{d.get('attention_mode', '?')}. The largest savers per backend (module, the function that "
                "saved, storages, MiB):\n")
        doc.commands([d.get("command", "")])
        for backend, b in sorted(d["backends"].items()):
            top = b.get("by_site", [])[:8]
            doc.add(f"{backend}: {fmt(b['MiB'])} MiB in all.\n")
            doc.add(table(["module", "saved by", "storages", "MiB"],
                          [(s["module"], saver(s["site"]), s["storages"], fmt(s["MiB"])) for s in top],
                          [False, False, True, True]))
    doc.files([*simple, *breakdown])


def saver(site: str) -> str:
    """'zipformer_fast/nn/feedforward.py:35 forward' -> 'feedforward.forward' (file and function)."""
    where, _, func = site.partition(" ")
    return f"{Path(where.split(':')[0]).stem}.{func}"


def labelled_entries(doc: Doc, file: str, title: str, intro: str = ""):
    """(path, [(label, entry)] sorted by label) of a results file holding one entry per label
    (bench.harness.write_labelled_entry), after adding the section's title, intro and the file's
    recorded method to doc; (None, []) when the file is absent."""
    path, d = recorded(file)
    if d is None:
        return None, []
    doc.add(title)
    if intro:
        doc.add(intro)
    doc.caveats(d, ("method",))
    return path, [(label, d[label]) for label in sorted(k for k in d if isinstance(d[k], dict))]


def host_overhead(doc: Doc) -> None:
    path, entries = labelled_entries(
        doc, "cpu/host_overhead.json", "## Host overhead per fused-op call (CPU, kernels stubbed)\n",
        "Microseconds of Python/dispatch per call with the Triton launches replaced by a counter: what a GPU run "
        "pays on the host before any kernel runs. Each label is one code version's run.\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### {label} (commit {e.get('git_commit', '?')}, torch {e.get('torch', '?')}, "
                f"threads: {e.get('threads', '?')})\n")
        doc.commands([e.get("command", "")])
        doc.caveats(e, ("note",))
        res = e.get("results_us", {})
        def verdict(r):
            return {True: "yes", False: "no"}.get(r.get("within_targets"), "")

        doc.add(table(["op", "forward µs", "launches", "forward, no grad µs", "backward node µs", "launches",
                       "autograd.grad µs", "within 10 / 15 µs"],
                      [(op, fmt(r.get("forward_us")), fmt(r.get("launches_forward")), fmt(r.get("forward_nograd_us")),
                        fmt(r.get("backward_us")), fmt(r.get("launches_backward")), fmt(r.get("backward_engine_us")),
                        verdict(r))
                       for op, r in res.items()], [False] + [True] * 6 + [False]))
        cal = e.get("calibration_us", {})
        if cal:
            doc.add("Calibration (the floor any autograd-recorded op pays here): "
                    + ", ".join(f"{k.replace('_us', '')} {fmt(v)} µs" for k, v in cal.items()) + ".\n")
    doc.files([path])


def launch_count(doc: Doc) -> None:
    path, entries = labelled_entries(doc, "cpu/launch_count.json", "## Launches per encoder step (CPU interpreter)\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### {label}: Zipformer-{e['preset']}, batch {e['batch']} × {fmt(e['seconds'])} s "
                f"(commit {e.get('git_commit', '?')}, {e.get('device', '?')})\n")
        doc.commands([e.get("command", "")])
        res = e["results"]
        doc.add(table(["step", "aten ops", "Triton launches", "total"],
                      [(k, v["aten_ops"], v["triton_launches"], v["total"]) for k, v in res.items()
                       if isinstance(v, dict)], [False, True, True, True]))
        ratios = []
        for key, limit in LAUNCH_TARGETS.items():
            if key in res:
                ratios.append((key.replace("_ratio", ""), f"{res[key]:.3f}", f"{limit:.2f}",
                               "yes" if res[key] <= limit else "NO"))
        if ratios:
            doc.add("Fused / reference launches against the target:\n")
            doc.add(table(["step", "fused / reference", "target", "met"], ratios, [False, True, True, False]))
    doc.files([path])


def compile_check(doc: Doc) -> None:
    path, d = recorded("cpu/compile_check.json")
    if d is None:
        return
    doc.add("## torch.compile: graph breaks and a compiled training loop\n")
    doc.add(f"torch {d['torch']} on {d['device']} ({d.get('threads', d.get('cpu_threads', '?'))} threads, TRITON_INTERPRET="
            f"{d.get('triton_interpret', '?')}). Whole-model trace with `fullgraph`; the seconds are tracing "
            "time on this machine.\n")
    doc.commands([d["command"]])
    doc.add(table(["backend / mode", "graphs", "graph breaks", "seconds"],
                  [(k, v["graphs"], v["graph_breaks"], fmt(v["seconds"])) for k, v in d["graph_breaks"].items()],
                  [False, True, True, True]))
    if "--steps 0" in d["command"]:
        doc.add("`--steps 0`: the trace only; no compiled training step was run for this record.\n")
    loop = d.get("training_loop")
    if loop:
        doc.add(f"Compiled XS training loop ({loop['dynamo_backend']}, ops backend {loop['ops_backend']}, T and B "
                f"changing every step): {loop['compilations']} compilations over {loop['steps']} steps (target "
                f"<= 3); largest relative difference of a step's loss from the eager loop with device-side "
                f"randomness: {fmt(loop['max_rel_loss_diff'])} (first step {fmt(loop['first_step_rel_loss_diff'])}; "
                "target: equal).\n")
        if "steps_with_equal_random_decisions" in loop:
            doc.add(f"Random decisions ({loop['random_decisions_per_step']} firings per step) equal to eager's in "
                    f"{loop['steps_with_equal_random_decisions']} of {loop['steps']} steps; the loops' losses bitwise "
                    f"equal for the first {loop['steps_bitwise_equal']} steps; each step's loss recomputed by eager "
                    f"from the compiled loop's state at that step: largest relative difference "
                    f"{fmt(loop['max_rel_loss_diff_per_step'])}.\n")
        if "compiled_at_steps" in loop:
            doc.add(f"Steps that compiled: {loop['compiled_at_steps']}; dynamo compile ids of the backend calls: "
                    f"{', '.join(c[0] for c in loop.get('compiles', []))}; recompilations (a guard failed): "
                    f"{len(loop.get('recompilations', []))}.\n")
        for message in loop.get("recompilations", []):
            doc.add("Recompilation: " + " ".join(line.strip() for line in message.splitlines()) + "\n")
    if d.get("note"):
        doc.add(f"Note: {d['note']}\n")
    doc.files([path])


def train_compile(doc: Doc) -> None:
    path, entries = labelled_entries(doc, "cpu/train_compile.json",
                                     "## recipes/train.py --compile end to end (CPU, synthetic quick corpus)\n")
    if path is None:
        return
    for label, e in entries:
        doc.add(f"### compile backend {label} (commit {e.get('git_commit', '?')}, torch {e.get('torch', '?')}, "
                f"{e['threads']} thread(s), ops backend {e['backend']})\n")
        doc.commands([e.get("command", "")])
        rows = []
        for name, r in e["runs"].items():
            valid = r["valid"][-1][1]["valid_loss_per_frame"] if r["valid"] else None
            rows.append((name, r["steps"], fmt(r["train_wall_s"]), fmt(r["loss_curve"][-1][1]), fmt(valid),
                         fmt(r["decode_wall_s"]), fmt(r["test_wer"])))
        doc.add(table(["run", "steps", "training wall s", "last training loss", "last validation loss",
                       "decoding wall s", "test WER %"], rows, [False] + [True] * 6))
        recompiles = e["runs"]["compiled"].get("training_recompilations", [])
        doc.add(f"Recompilations during training: {len(recompiles)}"
                + "".join(f"; {fn}: {guard}" for fn, guard in recompiles)
                + f". Largest relative difference of the per-interval training losses: "
                  f"{fmt(e['max_rel_loss_curve_diff'])} (the runs draw their random decisions differently: "
                  "host-side in eager, device-side compiled).\n")
    doc.files([path])


def ptxas(doc: Doc) -> None:
    path, d = recorded("ptxas/report.json")
    if d is None:
        return
    doc.add("## Ahead-of-time compile of every Triton kernel (ptxas, no GPU needed)\n")
    doc.add(f"{d['compiled']} of {d['kernels']} kernel variants compiled for sm_80/sm_90, {d['spilling']} "
            f"spilling; {d.get('specialisation', '')}. Triton {d['triton']}, commit {d.get('git_commit', '?')}.\n")
    doc.commands([d["command"]])
    groups: Dict[str, dict] = {}
    for r in d["rows"]:
        g = groups.setdefault(r["group"], {"variants": 0, "max_registers": 0, "spill": 0, "max_shared": 0})
        g["variants"] += 1
        g["max_registers"] = max(g["max_registers"], r["registers"])
        g["spill"] += r["spill_stores"] + r["spill_loads"]
        g["max_shared"] = max(g["max_shared"], r["shared"])
    doc.add(table(["kernel file", "compiles", "max registers", "spill bytes", "max shared (B)"],
                  [(k, v["variants"], v["max_registers"], v["spill"], v["max_shared"]) for k, v in sorted(groups.items())],
                  [False, True, True, True, True]))
    doc.add("Every variant's registers, spills, stack and shared memory are in the report.\n")
    doc.files(p for p in (path, path.with_suffix(".md")) if p.exists())


def synthetic_recipe(doc: Doc) -> None:
    paths = sorted((RESULTS / "cpu").glob("synthetic_recipe_run_summary*.json")) if (RESULTS / "cpu").exists() else []
    if not paths:
        return
    doc.add("## Synthetic ASR recipe (espeak-ng corpus, 2-core CPU)\n")
    doc.add("`python -m recipes.synthetic.run --device auto` from nothing: corpus, features, tokenizer, "
            "training under a wall-clock budget, decoding of the test set. The recipe and its settings: "
            "[recipes/synthetic/README.md](../recipes/synthetic/README.md).\n")
    rows = []
    for p in paths:
        d = load_json(p)
        t, s = d.get("timings", {}), d.get("settings", {})
        wers = d.get("wer", {})
        rows.append((p.name, d["steps"], fmt(t.get("train_s")), fmt(t.get("total_s")),
                     s.get("decode", {}).get("avg", "-"), wer(wers.get("greedy_search")),
                     wer(wers.get("modified_beam_search"))))
    doc.add(table(["file", "steps", "training s", "whole run s", "decode avg", "test WER % greedy",
                   "test WER % modified beam"], rows, [False, True, True, True, True, True, True]))
    d = load_json(paths[0])
    curve = d.get("loss_curve", [])
    if curve:
        marks = [c for c in curve if c[0] in (100, 500, 1000, 1500, 2000)] + [curve[-1]]
        doc.add("Training loss per frame of the first file, at a few steps: "
                + ", ".join(f"step {int(c[0])}: {c[1]:.3f}" for c in marks) + ".\n")
    doc.files(paths)


def streaming(doc: Doc) -> None:
    path, d = recorded("cpu/streaming_synthetic.json")
    if d is None:
        return
    doc.add("## Streaming: causal model on the synthetic corpus\n")
    tr, dec = d["training"], d["decode"]
    doc.add(f"{d.get('what', '')}. {d['device']}, torch {d['torch']}, {d.get('threads', '?')} thread of "
            f"{d.get('cpu_count', '?')}. Trained {tr['steps']} steps ({fmt(tr['train_s'])} s) with chunk sizes "
            f"{tr['chunk_size']} and left contexts {tr['left_context_frames']}; decoded at chunk "
            f"{dec['chunk_size']}, left context {dec['left_context_frames']}, avg {dec['avg']}, "
            f"{dec.get('num_decode_streams', '?')} streams at once.\n")
    doc.commands([d["command"]])
    methods = sorted({m for v in d["wer"].values() for m in v})
    doc.add(table(["decoding", *[f"test WER % {m}" for m in methods]],
                  [(k.replace("_", " "), *[wer(v.get(m)) for m in methods]) for k, v in d["wer"].items()],
                  [False] + [True] * len(methods)))
    lat, rtf = d.get("latency", {}), d.get("streaming_rtf", {})
    doc.add(f"Latency: chunk {lat.get('chunk_ms')} ms + look-ahead {lat.get('lookahead_ms')} ms (at most "
            f"{lat.get('max_ms')} ms, mean {fmt(lat.get('mean_ms'))} ms). Real-time factor of real streaming: "
            + ", ".join(f"{k} {v}" for k, v in rtf.items()) + f" over {fmt(d.get('streaming_audio_seconds'))} s of audio.\n")
    doc.files([path])


def heads(doc: Doc) -> None:
    path, d = recorded("cpu/heads_synthetic.json")
    if d is None:
        return
    doc.add("## CTC, CTC + attention decoder and CR-CTC on the synthetic corpus\n")
    doc.add(f"{d.get('device', '?')}, torch {d.get('versions', {}).get('torch', '?')}.\n")
    doc.caveats(d)
    doc.commands(h.get("command", "") for h in d["heads"].values())
    methods = sorted({m for h in d["heads"].values() for m in h.get("test_wer_percent", {})})
    rows = [(name, h.get("steps", "-"), fmt(h.get("train_seconds")),
             *[wer(h.get("test_wer_percent", {}).get(m)) for m in methods]) for name, h in d["heads"].items()]
    doc.add(table(["heads", "steps", "training s", *[f"test WER % {m}" for m in methods]], rows,
                  [False, True, True] + [True] * len(methods)))
    ref = d.get("transducer_ctc_landed_run")
    if ref:
        doc.add(f"For comparison, the transducer + CTC run ({ref.get('source', '')}): {ref['steps']} steps, "
                + ", ".join(f"{k} {wer(v)} %" for k, v in ref.get("test_wer_percent", {}).items()) + ".\n")
    doc.files([path])


def sherpa(doc: Doc) -> None:
    paths = sorted((RESULTS / "cpu").glob("sherpa_onnx_synthetic*.json")) if (RESULTS / "cpu").exists() else []
    for path in paths:
        d = load_json(path)
        doc.add(f"## ONNX export and sherpa-onnx decoding: `{path.name}`\n")
        doc.add(f"{d.get('device', '?')}; " + ", ".join(f"{k} {v}" for k, v in sorted(d.get("versions", {}).items()))
                + f". Model: {d.get('model', '?')}. Exported: {', '.join(d.get('exported', []))} in "
                f"{fmt(d.get('export_seconds'))} s.\n")
        doc.caveats(d)
        doc.commands([d.get("command", "")])
        errs = [(kind, out, fmt(v)) for kind, outs in sorted(d.get("onnxruntime_vs_pytorch_relative_error", {}).items())
                for out, v in outs.items()]
        if errs:
            doc.add("onnxruntime against PyTorch, relative error per graph output:\n")
            doc.add(table(["graph", "output", "relative error"], errs, [False, False, True]))
        runs = d.get("sherpa_onnx", {})
        if runs:
            doc.add(f"sherpa-onnx decoding of {d.get('utterances', '?')} test utterances (PyTorch: "
                    + ", ".join(f"{k} {wer(v)} %" for k, v in d.get("pytorch_wer", {}).items()) + "):\n")
            doc.add(table(["model / precision / method", "WER %", "real-time factor", "audio s"],
                          [(k, wer(v.get("wer")), fmt(v.get("rtf")), fmt(v.get("audio_seconds"))) for k, v in runs.items()],
                          [False, True, True, True]))
        agree = d.get("greedy_token_agreement")
        if agree:
            doc.add(f"Greedy token sequences equal to PyTorch's: {agree['same']} of {agree['total']}.\n")
        doc.files([path])


def unclaimed(doc: Doc) -> None:
    rest = sorted(p for p in RESULTS.rglob("*") if p.is_file() and p not in doc.claimed)
    if not rest:
        return
    doc.add("## Other recorded files\n")
    doc.add("Files no section above reads; their top-level fields, for orientation.\n")
    for p in rest:
        if p.suffix == ".json":
            d = load_json(p)
            keys = ", ".join(sorted(d)) if isinstance(d, dict) else f"{len(d)} rows"
            doc.add(f"- {doc.link(p)}: {keys}\n")
        else:
            doc.add(f"- {doc.link(p)}\n")


SECTIONS: Sequence[Callable[[Doc], None]] = (
    table2, encoder_latency, gpu_check_logs, optimizer, kernels, saved_bytes, host_overhead, launch_count,
    compile_check, train_compile, ptxas, synthetic_recipe, streaming, heads, sherpa, unclaimed)


def render() -> str:
    doc = Doc()
    doc.add("# Measured results\n")
    doc.add("Generated by `python scripts/benchmarks_doc.py` from the files in [bench/results/](../bench/results/); "
            "edit those, not this page (tests/test_docs.py checks it is up to date). Every figure below was "
            "measured by the command shown on the device named. Device folders: "
            + ", ".join(f"`{d.name}`" for d in device_dirs()) + ".\n")
    notes = [f"`{d.name}`: {FOLDER_NOTES[d.name]}" for d in device_dirs() if d.name in FOLDER_NOTES]
    if notes:
        doc.add("What the folders hold:\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    for section in SECTIONS:
        section(doc)
    text = "\n".join(part.rstrip("\n") + "\n" for part in doc.parts)
    return re.sub(r"\n{3,}", "\n\n", text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output", type=Path, default=OUTPUT)
    ap.add_argument("--check", action="store_true", help="compare with --output instead of writing it")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        old = args.output.read_text() if args.output.exists() else ""
        if old != text:
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                       str(args.output), "regenerated", n=1))
            print(f"\n{args.output} is out of date: run python scripts/benchmarks_doc.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
