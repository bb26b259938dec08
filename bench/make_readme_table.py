"""Render the README's results tables from the files in bench/results/*/ (nothing typed by hand).

    python bench/make_readme_table.py                       # every device folder, to stdout
    python bench/make_readme_table.py --results bench/results/cpu --targets --out-dir DIR  # DIR/summary.md
    python bench/make_readme_table.py --readme README.md    # replace the block between
                                                            # <!-- bench:begin --> and <!-- bench:end -->

Per device folder: the encoder table from encoder_latency.csv (one line per model, backend,
dtype, mode: time p50 [p20-p80], peak memory, saved activations), the optimizer table from
optimizer.csv when present, and with --targets the project's GPU targets checked against the
measured rows (Zipformer-L inference: triton <= 50 % of reference time, <= 40 % of its peak
memory, faster than torch.compile; Zipformer-M training step: triton <= 60 % of reference time).
Also bench/results/table2.md when present.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as `python bench/make_readme_table.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from bench.harness import RESULTS, ROOT, add_out_dir_argument  # noqa: E402

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def read_rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cases(rows):
    """{(model, backend, dtype, mode): {metric: row}} keeping the latest row of each metric."""
    cases = {}
    for r in rows:
        cases.setdefault((r["model"], r["backend"], r["dtype"], r["mode"]), {})[r["metric"]] = r
    return cases


def _num(row):
    try:
        v = float(row["p50"])
    except (TypeError, ValueError, KeyError):
        return None
    return None if v != v else v


def _fmt(v) -> str:
    """Three significant digits at most, no exponent: 1234 -> '1234', 56.78 -> '56.8', 0.123 -> '0.123'."""
    if v is None:
        return "-"
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"


def latency_table(rows) -> str:
    if not rows:
        return "_no encoder_latency.csv_\n"
    cases = _cases(rows)
    static = {k[0]: v for k, v in cases.items() if k[3] == "static"}
    first = rows[0]
    lines = [f"Encoder, batch {first['batch_size']} x {first['duration_s']} s, {first['device']} "
             f"(torch {first['torch']}, commit {first['git_commit']}):", "",
             "| model | params (M) | GFLOPs / 30 s | backend | dtype | mode | time ms, p50 [p20-p80] | "
             "peak MB | saved act. MB |", "|---|---:|---:|---|---|---|---:|---:|---:|"]
    for (model, backend, dtype, mode), m in cases.items():
        if mode == "static":
            continue
        s = static.get(model, {})
        params = f"{_num(s['params_m']):.1f}" if "params_m" in s else "-"
        gflops = f"{_num(s['gflops_30s']):.1f}" if "gflops_30s" in s else "-"
        if "error" in m and "time_ms" not in m:
            lines.append(f"| {model} | {params} | {gflops} | {backend} | {dtype} | {mode} | failed | | |")
            continue
        t = m.get("time_ms")
        tstr = f"{_fmt(float(t['p50']))} [{_fmt(float(t['p20']))}-{_fmt(float(t['p80']))}]" if t else "-"
        peak = _fmt(_num(m["peak_mem_mb"])) if "peak_mem_mb" in m else "-"
        saved = _fmt(_num(m["saved_act_mb"])) if "saved_act_mb" in m else "-"
        lines.append(f"| {model} | {params} | {gflops} | {backend} | {dtype} | {mode} | {tstr} | {peak} | {saved} |")
    return "\n".join(lines) + "\n"


def _ratio(cases, model, mode, dtype, metric, num_backend, den_backend):
    num = cases.get((model, num_backend, dtype, mode), {}).get(metric)
    den = cases.get((model, den_backend, dtype, mode), {}).get(metric)
    if num is None or den is None or _num(num) is None or not _num(den):
        return None
    return _num(num) / _num(den)


TARGETS = (
    # (description, model, mode, metric, numerator backend, denominator backend, limit)
    ("Zipformer-L inference time, triton / reference", "zipformer-L", "infer", "time_ms", "triton", "reference", 0.50),
    ("Zipformer-L inference peak memory, triton / reference", "zipformer-L", "infer", "peak_mem_mb", "triton", "reference", 0.40),
    ("Zipformer-L inference time, triton / torch.compile", "zipformer-L", "infer", "time_ms", "triton", "compile", 1.00),
    ("Zipformer-M training step time, triton / reference", "zipformer-M", "train", "time_ms", "triton", "reference", 0.60),
)


def targets_table(rows) -> str:
    cases = _cases(rows)
    dtypes = sorted({r["dtype"] for r in rows if r["mode"] != "static"}) or ["fp32"]
    lines = ["| target | dtype | measured | limit | met |", "|---|---|---:|---:|:---:|"]
    for desc, model, mode, metric, num_b, den_b, limit in TARGETS:
        for dtype in dtypes:
            ratio = _ratio(cases, model, mode, dtype, metric, num_b, den_b)
            if ratio is None:
                if dtype == "fp32":
                    lines.append(f"| {desc} | {dtype} | not measured | {limit:.2f} | - |")
                continue
            met = "yes" if (ratio < limit if limit == 1.0 else ratio <= limit) else "NO"
            lines.append(f"| {desc} | {dtype} | {ratio:.2f} | {limit:.2f} | {met} |")
    return "\n".join(lines) + "\n"


def optimizer_table(rows) -> str:
    if not rows:
        return ""
    lines = ["| optimizer | step ms (median) | tensors | params |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.get('impl', '?')} | {float(r.get('step_ms_median', 'nan')):.2f} | "
                     f"{r.get('n_tensors', '')} | {r.get('n_params', '')} |")
    device = rows[0].get("device_name") or rows[0].get("device", "")  # files before the harness: device_name
    return f"Optimizer step, {device}:\n\n" + "\n".join(lines) + "\n"


def render(result_dirs, targets: bool) -> str:
    parts = []
    for d in result_dirs:
        name = os.path.basename(os.path.normpath(d))
        rows = read_rows(os.path.join(d, "encoder_latency.csv"))
        parts.append(f"#### {name}\n\n" + latency_table(rows))
        if targets:
            parts.append("GPU targets (ratios of measured medians):\n\n" + targets_table(rows))
        opt = optimizer_table(read_rows(os.path.join(d, "optimizer.csv")))
        if opt:
            parts.append(opt)
        if os.path.exists(os.path.join(d, "figure3.png")):
            rel = os.path.relpath(os.path.join(d, "figure3.png"), ROOT)
            parts.append(f"![Figure 3 on {name}]({rel})\n")
    table2 = RESULTS / "table2.md"
    if os.path.exists(table2) and not targets:
        with open(table2) as f:
            parts.append(f.read())
    return "\n".join(parts)


def replace_block(readme: str, block: str) -> str:
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} block to replace")
    head, rest = readme.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Render README tables from bench/results/*/")
    ap.add_argument("--results", action="append", help="a device folder (repeatable); default: all")
    ap.add_argument("--targets", action="store_true", help="also check the GPU targets")
    add_out_dir_argument(ap, default_help="none: print to stdout; given: <out-dir>/summary.md")
    ap.add_argument("--readme", help="replace the bench block of this README in place")
    args = ap.parse_args(argv)
    dirs = args.results or sorted(d for d in glob.glob(str(RESULTS / "*")) if os.path.isdir(d))
    text = render(dirs, args.targets)
    if args.readme:
        with open(args.readme) as f:
            new = replace_block(f.read(), text)
        with open(args.readme, "w") as f:
            f.write(new)
    if args.out_dir:
        out = pathlib.Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.md").write_text(text)
    if not args.readme and not args.out_dir:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
