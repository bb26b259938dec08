"""`recipes/train.py --compile` end to end against the eager run: the synthetic recipe's quick
corpus (espeak-ng + sox), the recipe's tiny Zipformer, the same seed and steps, then greedy
decoding of each (`recipes/decode.py`, with --compile for the compiled model).

Recorded: each run's wall time, the per-interval training losses of both (the recipe's
loss_curve, averaged over --log-interval steps), their largest relative difference, validation
losses, the test WERs, and how often dynamo compiled (TORCH_LOGS=recompiles: each recompilation
and the guard that triggered it). The compiled run's first step includes compilation (the
encoder's regions, Conv-Embed and the stacks, dynamic shapes; see AsrModel.compile_encoder), so
its wall time is compile + training; its first validation compiles the eval graphs (grad mode
off: a guard, expected once).

--compile-backend: inductor (the recipes' default) generates C++ code on the CPU: the 40-step
compiled run takes ~23 minutes on one core of the 2-core VM (torch 2.13), nearly all of it
compilation; aot_eager runs the same dynamo and AOTAutograd tracing, guards and recompilations
without code generation (what this script records on CPUs by default).

    python bench/train_compile.py [--steps 60] [--threads 2] [--backend reference]
                                  [--compile-backend aot_eager] [--out-dir bench/results/cpu]
        -> <out-dir>/train_compile.json (one entry per compile backend)
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path[0] = str(ROOT)

from bench.harness import add_out_dir_argument, provenance, results_dir, write_labelled_entry  # noqa: E402

PREPARE = ["--train-sentences", "60", "--train-repeats", "2", "--dev-sentences", "6", "--test-sentences", "8",
           "--test-repeats", "1", "--speed-perturb", "0", "--vocab-size", "64"]
TRAIN = ["--model-config", str(ROOT / "recipes/synthetic/model_tiny.json"), "--num-workers", "0", "--tensorboard", "0",
         "--max-duration", "20", "--num-buckets", "2", "--base-lr", "0.05", "--lr-batches", "300", "--lr-epochs", "10",
         "--lr-warmup-batches", "10", "--warm-step", "20", "--ref-duration", "1", "--average-period", "5",
         "--save-every-n", "10", "--log-interval", "5", "--valid-interval", "20", "--spec-aug-time-warp", "20",
         "--use-ctc", "1", "--num-epochs", "100", "--device", "cpu", "--progress", "0"]


def _run(cmd, env):
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return proc, round(time.time() - t0, 1)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="reference", choices=["reference", "triton", "auto"])
    ap.add_argument("--compile-backend", default="aot_eager", help="torch.compile backend of the compiled run")
    ap.add_argument("--work-dir", default="exp/train_compile")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    a = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    work = ROOT / a.work_dir
    data = work / "data"
    if not (data / "manifests").exists():
        _run(["recipes.synthetic.prepare", "--data-dir", str(data), *PREPARE], env)
    common = ["--manifest-dir", str(data / "manifests"), "--bpe-model", str(data / "lang/bpe.model"),
              "--threads", str(a.threads), "--backend", a.backend]
    runs = {}
    for name, flag in (("eager", "0"), ("compiled", "1")):
        exp = work / name
        compile_args = ["--compile", flag, "--compile-backend", a.compile_backend]
        run_env = dict(env, TORCH_LOGS="recompiles") if flag == "1" else env
        proc, train_s = _run(["recipes.train", *common, "--exp-dir", str(exp), *TRAIN, "--max-steps", str(a.steps),
                              "--resume", "none", *compile_args], run_env)
        summary = json.loads((exp / "train_summary.json").read_text())
        _, decode_s = _run(["recipes.decode", *common, "--exp-dir", str(exp), "--decoding-method", "greedy_search",
                            "--avg", "1", "--device", "cpu", "--splits", "test", *compile_args], env)
        wer = json.loads((exp / "greedy_search" / "wer-test-greedy_search.json").read_text())
        runs[name] = {"train_wall_s": train_s, "train_seconds": summary["train_seconds"],
                      "steps": summary["batch_idx_train"], "loss_curve": summary["loss_curve"],
                      "valid": summary["valid"], "decode_wall_s": decode_s, "test_wer": wer["wer"]}
        if flag == "1":
            runs[name]["training_recompilations"] = recompilations(proc.stderr + proc.stdout)
        print(name, {k: v for k, v in runs[name].items() if k not in ("loss_curve", "valid")}, flush=True)
    regions = ["encoder_embed", "_encode_embedded"]  # AsrModel.compile_encoder's, for every backend
    pairs = zip(runs["eager"]["loss_curve"], runs["compiled"]["loss_curve"])
    rel = [abs(c - e) / abs(e) for (_, e), (_, c) in pairs]
    entry = {"steps": a.steps, "backend": a.backend, "compile_backend": a.compile_backend, "threads": a.threads,
             "compiled_regions": regions, "runs": runs,
             "max_rel_loss_curve_diff": max(rel), "rel_loss_curve_diff": rel, **provenance(__file__, argv)}
    out = results_dir("cpu", a.out_dir) / "train_compile.json"
    write_labelled_entry(out, a.compile_backend, "recipes/train.py with --compile 0 and 1 on the synthetic quick "
                         "corpus, same seed; then recipes/decode.py (see bench/train_compile.py)", entry)
    print(f"max relative loss-curve difference {max(rel):.2e} -> {out}")
    return entry


def recompilations(log: str) -> list:
    """[(function, guard that failed)] from dynamo's TORCH_LOGS=recompiles output, in order."""
    found, lines = [], log.splitlines()
    for i, line in enumerate(lines):
        if "Recompiling function" in line:
            function = line.split("Recompiling function", 1)[1].strip().replace(f"{ROOT}/", "")
            guard = next((g.split("]     - ", 1)[1].strip() for g in lines[i + 1:i + 4] if "]     - " in g), "")
            found.append([function, guard])
    return found

if __name__ == "__main__":
    main()
