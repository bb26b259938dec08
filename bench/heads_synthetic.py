"""The synthetic recipe's CTC-family heads under one short training budget each: CTC, CTC +
attention decoder (decoded with CTC and with attention-decoder rescoring of the CTC n-best) and
CR-CTC, trained one after another, and the landed transducer run beside them.

    python bench/heads_synthetic.py --train-steps 2141 --train-minutes 30 --threads 1
    python bench/heads_synthetic.py --collect-only --train-minutes 4 --threads 1   # runs already done

Writes <out-dir>/heads_synthetic.json (default bench/results/cpu/): per head the budget, the steps reached, the
training loss curve's last point and the test WER of each decoding method (the rescoring scale
chosen on dev), with the machine load seen during the runs. A short budget is not the recipe's
full 14-minute comparison; the JSON says so.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys

if __package__ in (None, ""):  # run as `python bench/heads_synthetic.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

from bench.harness import RESULTS, ROOT, add_out_dir_argument, provenance, results_dir, write_json  # noqa: E402

HEADS = ("ctc", "ctc_aed", "cr_ctc")
TRANSDUCER_SUMMARY = RESULTS / "cpu" / "synthetic_recipe_run_summary.json"


def run_command(head: str, args) -> list:
    cmd = [sys.executable, "-m", "recipes.synthetic.run", "--heads", head, "--train-minutes",
           str(args.train_minutes), "--device", "cpu", "--threads", str(args.threads), "--backend", "reference"]
    if args.train_steps:
        cmd += ["--train-steps", str(args.train_steps)]
    return cmd


def head_record(head: str, args) -> dict:
    summary = json.loads((ROOT / "exp" / f"synthetic-{head}" / "run_summary.json").read_text())
    rec = {"command": "python " + " ".join(run_command(head, args)[1:]),
           "train_budget_minutes": args.train_minutes, "steps": summary["steps"],
           "train_seconds": summary["timings"]["train_s"],
           "last_train_loss_per_frame": summary["loss_curve"][-1] if summary["loss_curve"] else None,
           "test_wer_percent": summary["wer"], "train_flags": summary["settings"]["train"],
           "decode_avg": summary["settings"]["decode"]["avg"]}
    if "attention_rescoring" in summary:
        rec["attention_rescoring"] = summary["attention_rescoring"]
    return rec


def budget_note(args, transducer: dict) -> str:
    if args.train_steps:
        return (f"Every head trained for {args.train_steps} steps (time cap {args.train_minutes:g} min), the "
                f"steps the transducer run reached in its {transducer['settings']['train']['max_minutes']:g} "
                "minutes, with the recipe's other settings unchanged: the same budget in updates.")
    return (f"One training budget of {args.train_minutes:g} min per head; steps reached depend on the "
            "machine's load (see load_average_after_each_run).")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-minutes", type=float, default=4.0)
    p.add_argument("--train-steps", type=int, default=0,
                   help="step budget per head (0: time only); the same steps as the transducer run make "
                        "the comparison independent of machine load")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--collect-only", action="store_true")
    p.add_argument("--load-note", default="", help="what the machine was doing meanwhile")
    add_out_dir_argument(p, default_help="bench/results/cpu")
    args = p.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    loads = {}
    if not args.collect_only:
        for head in HEADS:
            subprocess.run(run_command(head, args), cwd=ROOT, env=env, check=True)
            loads[head] = os.getloadavg()
    transducer = json.loads(TRANSDUCER_SUMMARY.read_text())
    result = {
        **provenance(__file__, argv),
        "note": (budget_note(args, transducer) + " " + args.load_note).strip(),
        "heads": {h: head_record(h, args) for h in HEADS},
        "transducer_ctc_landed_run": {
            "source": str(TRANSDUCER_SUMMARY.relative_to(ROOT)), "train_budget_minutes":
                transducer["settings"]["train"]["max_minutes"], "steps": transducer["steps"],
            "train_seconds": transducer["timings"]["train_s"], "test_wer_percent": transducer["wer"],
            "decode_avg": transducer["settings"]["decode"]["avg"]},
    }
    if loads:
        result["load_average_after_each_run"] = loads
    write_json(results_dir("cpu", args.out_dir) / "heads_synthetic.json", result)
    print(json.dumps({h: (r["steps"], r["test_wer_percent"]) for h, r in result["heads"].items()}))


if __name__ == "__main__":
    main()
