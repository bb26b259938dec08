"""Table 2 check: parameters and encoder GFLOPs per 30 s utterance of every model we implement,
beside the paper's numbers.

    python bench/table2.py [--models ...] [--out-dir bench/results]

Counting (bench/flops.py): parameters of the whole model with its heads (the paper's "Params",
icefall's "Number of model parameters"); FLOPs of `forward_encoder` on one 30 s utterance under
torch's FlopCounterMode on the meta device, counted as the paper's DeepSpeed profiler counts
matmuls and convolutions.

Tolerances the project holds itself to (checked by tests/test_conformer.py and
tests/test_bench_smoke.py): Zipformer within 2 %, the Conformer baselines within 5 %.
Writes table2.csv / table2.json (rows with device, versions, command, UTC time) and table2.md into
--out-dir (default bench/results/) and prints the markdown table.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

if __package__ in (None, ""):  # run as `python bench/table2.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.flops import count_encoder_flops, count_params  # noqa: E402
from bench.harness import RESULTS, ResultTable, add_out_dir_argument, provenance  # noqa: E402
from bench.models import build_model, parse_name  # noqa: E402
from bench.paper import PAPER  # noqa: E402

TOLERANCE = {"zipformer": 0.02, "conformer": 0.05}


def table2_row(name: str) -> dict:
    """Our params (M) and GFLOPs per 30 s for model `name`, beside the paper's and the tolerance."""
    family, _, _ = parse_name(name)
    model = build_model(name, device=torch.device("meta"))
    params_m = count_params(model) / 1e6
    gflops = count_encoder_flops(model) / 1e9
    paper = PAPER.get(name)
    row = {"model": name, "params_m": round(params_m, 3), "gflops_30s": round(gflops, 2),
           "paper_params_m": None, "paper_gflops_30s": None, "params_rel_diff": None,
           "gflops_rel_diff": None, "tolerance": TOLERANCE[family], "within_tolerance": None}
    if paper is not None:
        dp = params_m / paper.params_m - 1
        dg = gflops / paper.gflops_30s - 1
        row.update(paper_params_m=paper.params_m, paper_gflops_30s=paper.gflops_30s,
                   params_rel_diff=round(dp, 4), gflops_rel_diff=round(dg, 4),
                   within_tolerance=abs(dp) <= TOLERANCE[family] and abs(dg) <= TOLERANCE[family])
    return row


def to_markdown(rows) -> str:
    lines = ["| model | params (M) | paper | diff | GFLOPs / 30 s | paper | diff | within tol. |",
             "|---|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        pct = (lambda v: "" if v is None else f"{100 * v:+.1f} %")
        ok = {True: f"yes (±{100 * r['tolerance']:.0f} %)", False: "NO", None: "-"}[r["within_tolerance"]]
        lines.append(f"| {r['model']} | {r['params_m']:.2f} | {r['paper_params_m'] or '-'} | "
                     f"{pct(r['params_rel_diff'])} | {r['gflops_30s']:.1f} | {r['paper_gflops_30s'] or '-'} | "
                     f"{pct(r['gflops_rel_diff'])} | {ok} |")
    return "\n".join(lines) + "\n"


def write_table2(rows, out_dir, argv=None) -> None:
    """table2.csv / table2.json (the rows, each with provenance) and table2.md (the table)."""
    meta = provenance(__file__, argv, "meta")
    ResultTable(out_dir, "table2").add(*[dict(r, **meta) for r in rows])
    with open(pathlib.Path(out_dir) / "table2.md", "w") as f:
        f.write("Table 2 check (params with transducer/CTC heads, encoder GFLOPs for one 30 s "
                f"utterance), measured by `{meta['command']}`:\n\n" + to_markdown(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(PAPER), help="comma-separated model names")
    add_out_dir_argument(ap, default_help="bench/results")
    args = ap.parse_args(argv)
    rows = [table2_row(name) for name in args.models.split(",") if name]
    print(to_markdown(rows))
    write_table2(rows, args.out_dir or RESULTS, argv)
    bad = [r["model"] for r in rows if r["within_tolerance"] is False]
    if bad:
        print(f"outside tolerance: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
