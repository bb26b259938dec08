"""Table 2 check: parameters and encoder GFLOPs per 30 s utterance of every model we implement,
beside the paper's numbers.

    python bench/table2.py [--models ...] [--out-dir bench/results]

Counting: parameters of the whole model with its heads (the paper's "Params", icefall's
"Number of model parameters"); FLOPs of `forward_encoder` (Conv-Embed + encoder) on one 30 s
utterance (3000 frames of 80-dim fbank), counted by torch's FlopCounterMode on the meta device:
2 FLOPs per multiply-add of every matmul and convolution, nothing for element-wise ops. The paper
used DeepSpeed's profiler, which counts matmuls and convolutions the same way (it also counts
element-wise ops, a fraction of a percent here). The meta device makes this free: no memory, no
arithmetic, so the 122 M-parameter Conformer-L costs a second.

Tolerances the project holds itself to (checked by tests/test_conformer.py and
tests/test_bench_smoke.py): Zipformer within 2 %, the Conformer baselines within 5 %.
Writes table2.csv / table2.json / table2.md into --out-dir and prints the markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import PAPER, build_model, parse_name  # noqa: E402

TOLERANCE = {"zipformer": 0.02, "conformer": 0.05}
FRAMES_PER_SECOND = 100  # 10 ms fbank frame shift


def _sdpa_cpu_mapping():
    """torch counts 0 FLOPs for CPU scaled_dot_product_attention: give it the generic formula."""
    try:
        from torch.utils.flop_counter import sdpa_flop_count
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (ImportError, AttributeError):
        return {}

    def formula(query_shape, key_shape, value_shape, *args, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)
    return {op: formula}


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_encoder_flops(model: torch.nn.Module, seconds: float = 30.0, batch: int = 1) -> int:
    """FLOPs of model.forward_encoder on `batch` utterances of `seconds` s, on the model's device."""
    device = next(model.parameters()).device
    frames = int(round(seconds * FRAMES_PER_SECOND))
    features = torch.zeros(batch, frames, 80, device=device)
    lens = torch.full((batch,), frames, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    import zipformer_fast
    try:
        # The reference ops define the arithmetic (fused kernels do the same math, and cannot run
        # on the meta device).
        with FlopCounterMode(display=False, custom_mapping=_sdpa_cpu_mapping()) as counter, \
                torch.inference_mode(), zipformer_fast.use_backend("reference"):
            model.forward_encoder(features, lens)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def measure(name: str) -> dict:
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


def write(rows, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "table2.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = {"command": "python bench/table2.py " + " ".join(sys.argv[1:]), "torch": torch.__version__,
            "counting": "torch FlopCounterMode on the meta device, 1 x 30 s, forward_encoder"}
    with open(os.path.join(out_dir, "table2.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(out_dir, "table2.md"), "w") as f:
        f.write("Table 2 check (params with transducer/CTC heads, encoder GFLOPs for one 30 s "
                "utterance), measured by `python bench/table2.py`:\n\n" + to_markdown(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(PAPER), help="comma-separated model names")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    rows = [measure(name) for name in args.models.split(",") if name]
    print(to_markdown(rows))
    write(rows, args.out_dir)
    bad = [r["model"] for r in rows if r["within_tolerance"] is False]
    if bad:
        print(f"outside tolerance: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
