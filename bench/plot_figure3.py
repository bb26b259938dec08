"""Draw the paper's Figure 3 from encoder_latency rows: (left) averaged inference time vs WER,
(right) peak memory vs WER, one point per model, one line per (family, backend, dtype).

    python bench/plot_figure3.py bench/results/<device>/encoder_latency.csv [--out-dir DIR]

writes <out-dir>/figure3.png (default: beside the CSV).

The WERs are the paper's (Table 2, averaged over test-clean and test-other): we time and measure
the encoders, we do not retrain them, so the y axis places each model where the paper's training
put it and the x axis is what this machine measured. Only inference rows ("infer") are drawn.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import sys

if __package__ in (None, ""):  # run as `python bench/plot_figure3.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from bench.harness import add_out_dir_argument  # noqa: E402
from bench.models import parse_name  # noqa: E402
from bench.paper import PAPER  # noqa: E402

FAMILY_STYLE = {"zipformer": dict(marker="o", label="Zipformer"), "conformer": dict(marker="s", label="Conformer")}
# Colour by family and backend: the baseline in greys/olive so the two families part at a glance.
COLOR = {("zipformer", "reference"): "tab:blue", ("zipformer", "triton"): "tab:red",
         ("zipformer", "compile"): "tab:green", ("conformer", "reference"): "dimgray",
         ("conformer", "compile"): "tab:olive"}
DTYPE_LINE = {"fp32": "-", "bf16": "--", "fp16": ":"}


def _series(rows, metric):
    """{(family, backend, dtype): [(x, wer, size), ...]} for inference rows of `metric`."""
    out = {}
    for r in rows:
        if r["mode"] != "infer" or r["metric"] != metric or r["model"] not in PAPER:
            continue
        family, size, _ = parse_name(r["model"])
        x = float(r["mean"])
        if x != x:  # NaN: a failed case
            continue
        out.setdefault((family, r["backend"], r["dtype"]), []).append((x, PAPER[r["model"]].wer_avg, size))
    for points in out.values():
        points.sort(key=lambda p: "SML".index(p[2]))
    return out


def plot(rows, path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    on_cpu = bool(rows) and rows[0].get("device") == "cpu"
    mem_label = ("Peak memory (MB; CPU: live tensor storages + weights, a lower bound)" if on_cpu
                 else "Peak memory (MB, torch.cuda.max_memory_allocated)")
    panels = (("time_ms", "Averaged inference time (ms per batch)"), ("peak_mem_mb", mem_label))
    for ax, (metric, xlabel) in zip(axes, panels):
        series = _series(rows, metric)
        for (family, backend, dtype), points in sorted(series.items()):
            xs, ys, sizes = zip(*points)
            ax.plot(xs, ys, DTYPE_LINE.get(dtype, "-"), marker=FAMILY_STYLE[family]["marker"], markersize=8,
                    color=COLOR.get((family, backend), "gray"),
                    label=f"{FAMILY_STYLE[family]['label']} {backend} {dtype}")
            for x, y, size in points:
                ax.annotate(f"{family[0].upper()}-{size}", (x, y), textcoords="offset points",
                            xytext=(6, 4), fontsize=8)
        if not series:
            ax.text(0.5, 0.5, f"no '{metric}' rows measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("WER % (paper; mean of test-clean and test-other)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(fontsize=8, loc="upper right")
    first = rows[0] if rows else {}
    fig.suptitle(f"Encoder inference, batch {first.get('batch_size', '?')} x {first.get('duration_s', '?')} s "
                 f"on {first.get('device', '?')}"
                 f"{' (' + str(first['threads']) + ' thread)' if on_cpu and first.get('threads') else ''}"
                 f"  (lower-left is better)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Draw Figure 3 from encoder_latency.csv")
    ap.add_argument("csv")
    add_out_dir_argument(ap, default_help="the CSV's folder")
    args = ap.parse_args(argv)
    with open(args.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    out_dir = pathlib.Path(args.out_dir) if args.out_dir else pathlib.Path(args.csv).resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    print(plot(rows, out_dir / "figure3.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
