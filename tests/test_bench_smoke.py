"""CPU smoke of the benchmarks (bench/): Figure 3 end to end on tiny models, the Table 2 check, the
README table renderer, the kernel benchmark's ordering and rows, and gpu_check.sh's wiring (the
shared harness itself: tests/test_bench_harness.py). Runs in well under a minute on 2 cores."""
import csv
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from bench import encoder_latency, make_readme_table, table2

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_encoder_latency_end_to_end_on_cpu(tmp_path):
    # 0.5 s = 50 frames: the smallest input both tiny models take comfortably. FLOPs are checked
    # by the Table 2 tests below, so not counted here.
    rc = encoder_latency.main([
        "--device", "cpu", "--models", "zipformer-XS,conformer-XS", "--batch-size", "2",
        "--duration", "0.5", "--modes", "infer,train", "--warmup", "0", "--iters", "2",
        "--no-flops", "--out-dir", str(tmp_path)])
    assert rc == 0
    with open(tmp_path / "encoder_latency.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    got = {(r["model"], r["mode"], r["metric"]) for r in rows}
    for model in ("zipformer-XS", "conformer-XS"):
        assert (model, "static", "params_m") in got
        for mode in ("infer", "train"):
            assert {(model, mode, "time_ms"), (model, mode, "peak_mem_mb")} <= got
        assert (model, "train", "saved_act_mb") in got
    for r in rows:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__
        assert float(r["p20"]) <= float(r["p50"]) <= float(r["p80"])
        if r["metric"] in ("time_ms", "peak_mem_mb", "saved_act_mb"):
            assert float(r["p50"]) > 0
    # Training keeps activations for backward: it must need more memory than inference.
    peak = {(r["model"], r["mode"]): float(r["p50"]) for r in rows if r["metric"] == "peak_mem_mb"}
    assert peak[("conformer-XS", "train")] > peak[("conformer-XS", "infer")]
    png = tmp_path / "figure3.png"
    assert png.exists()
    import matplotlib.image
    h, w = matplotlib.image.imread(str(png)).shape[:2]
    assert w > 2 * h * 0.9, "two panels side by side"


def test_bad_arguments_fail_clearly():
    with pytest.raises(SystemExit):
        encoder_latency.parse_args(["--backends", "tensorrt"])
    with pytest.raises(SystemExit):
        encoder_latency.parse_args(["--models", "transformer-S"])


@pytest.mark.parametrize("name", ["zipformer-S", "conformer-S"])
def test_table2_rows_within_tolerance(name, tmp_path):
    row = table2.table2_row(name)
    assert row["within_tolerance"] is True, row
    table2.write_table2([row], tmp_path, ["--models", name])
    assert "| " + name in (tmp_path / "table2.md").read_text()
    with open(tmp_path / "table2.csv", newline="") as f:
        (written,) = csv.DictReader(f)
    assert written["model"] == name and written["command"] == f"python bench/table2.py --models {name}"


def _row(model, backend, mode, metric, value, dtype="fp32"):
    return dict(model=model, backend=backend, dtype=dtype, mode=mode, metric=metric, p20=value, p50=value,
                p80=value, batch_size=30, duration_s=30, device="GPU", torch="x", git_commit="c")


def test_targets_table_computes_ratios_against_limits():
    rows = [_row("zipformer-L", "reference", "infer", "time_ms", 100), _row("zipformer-L", "triton", "infer", "time_ms", 45),
            _row("zipformer-L", "compile", "infer", "time_ms", 60),
            _row("zipformer-L", "reference", "infer", "peak_mem_mb", 1000),
            _row("zipformer-L", "triton", "infer", "peak_mem_mb", 500)]
    text = make_readme_table.targets_table(rows)
    lines = {line.split("|")[1].strip(): line for line in text.splitlines()[2:]}
    assert "| 0.45 | 0.50 | yes |" in lines["Zipformer-L inference time, triton / reference"]
    assert "| 0.50 | 0.40 | NO |" in lines["Zipformer-L inference peak memory, triton / reference"]
    assert "| 0.75 | 1.00 | yes |" in lines["Zipformer-L inference time, triton / torch.compile"]
    assert "not measured" in lines["Zipformer-M training step time, triton / reference"]
    block = make_readme_table.replace_block("a\n<!-- bench:begin -->\nold\n<!-- bench:end -->\nb", "new")
    assert block == "a\n<!-- bench:begin -->\nnew\n<!-- bench:end -->\nb"


def test_gpu_check_script_parses_and_plans_every_stage(tmp_path):
    script = ROOT / "bench" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    env = dict(os.environ, GPU_CHECK_PLAN_ONLY="1", GPU_CHECK_RESULTS=str(tmp_path), PYTHON=sys.executable)
    env.pop("OUT", None)
    res = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for stage in ("env", "fig3", "plot", "summary"):
        assert f"stage {stage} " in res.stdout or f"{stage} " in res.stdout
    assert "== gpu_check summary" in res.stdout


def test_kernel_bench_measures_attention_before_the_memory_bound_ops(tmp_path):
    """GPU time is short: with --attention, the attention rows (fwd+bwd against the reference) come first
    and are on disk before any memory-bound op runs; --attention-only stops there."""
    from bench import kernels as kernel_bench
    assert kernel_bench.main(["--smoke", "--attention", "--out-dir", str(tmp_path / "all")]) == 0
    ops = [r["op"] for r in csv.DictReader(open(tmp_path / "all" / "kernels.csv"))]
    first_other = next(i for i, op in enumerate(ops) if op not in ("copy",) and not op.startswith("attn_"))
    assert any(op.startswith("attn_") for op in ops[:first_other])
    assert not any(op.startswith("attn_") for op in ops[first_other:])
    assert kernel_bench.main(["--smoke", "--attention", "--attention-only", "--out-dir", str(tmp_path / "attn")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "attn" / "kernels.csv")))
    assert {r["op"] for r in rows} - {"copy"} and all(r["op"] == "copy" or r["op"].startswith("attn_") for r in rows)
    assert rows[1]["mode"] == "full"  # fwd+bwd before forward-only


def test_kernel_bench_reports_copy_floor_host_time_and_launches(tmp_path):
    """Each memory-bound case gets a same-volume copy row and % of copy; every provider row has
    host microseconds and launches per call (the fused forward of bias_norm is one kernel)."""
    from bench import kernels as kernel_bench
    assert kernel_bench.main(["--smoke", "--ops", "bias_norm", "--providers", "triton,reference", "--time-budget", "0",
                              "--out-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "kernels.csv")))
    case_rows = [r for r in rows if r["op"] == "bias_norm"]
    metric = {(r["provider"], r["mode"], r["metric"], r["shape"]): float(r["p50"]) for r in case_rows}
    shapes = {r["shape"] for r in case_rows}
    for shape in shapes:
        for mode in ("forward", "backward"):
            assert metric[("copy", mode, "ms", shape)] > 0
            assert metric[("triton", mode, "pct_of_copy", shape)] > 0
            assert metric[("triton", mode, "host_us", shape)] > 0
        assert metric[("triton", "forward", "launches", shape)] == 1
        assert metric[("triton", "backward", "launches", shape)] == 2  # kernel + partial-sum fold
        assert metric[("reference", "forward", "launches", shape)] > 1


def test_host_overhead_counts_each_ops_launches_and_checks_the_targets():
    # a subprocess: the script stubs Triton's interpreter launcher for the whole process
    res = subprocess.run([sys.executable, str(ROOT / "bench/host_overhead.py"), "--iters", "40", "--no-write",
                          "--ops", "bypass,bias_norm_bypass_per_sequence,linear_swoosh"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {line.split()[0]: dict(kv.split("=") for kv in line.split()[1:])
            for line in res.stdout.splitlines() if "=" in line and not line.startswith("calibration")}
    assert set(rows) == {"bypass", "bias_norm_bypass_per_sequence", "linear_swoosh"}
    # launches per call: one forward kernel; backward = the reduction kernel + one fold (per-sequence
    # scale and per-channel parameters folded by one launch)
    for name in ("bypass", "bias_norm_bypass_per_sequence"):
        assert float(rows[name]["launches_forward"]) == 1.0 and float(rows[name]["launches_backward"]) == 2.0
    assert float(rows["linear_swoosh"]["launches_forward_nograd"]) == 1.0
    for row in rows.values():
        forward_ok = all(float(row[k]) <= 10.0 for k in ("forward_us", "forward_nograd_us") if k in row)
        assert row["within_targets"] == str(forward_ok and float(row.get("backward_us", 0.0)) <= 15.0)
