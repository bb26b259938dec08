"""The benchmark harness every bench script uses (bench/harness.py, bench/memory.py), specified on
tiny CPU cases with known answers, and the rules that keep bench/ one package: each helper written
once, one output option (--out-dir), scripts runnable as files and as modules."""
import ast
import csv
import datetime
import json
import pathlib
import subprocess
import sys
import time

import pytest
import torch

from bench import harness
from bench.memory import PeakTensorMemory, peak_memory_mb, saved_for_backward

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
MiB = 1 << 20


# ------------------------------------------------------------------------------------------ device
def test_device_name_is_a_non_empty_string_that_names_the_results_folder():
    assert harness.device_name("cpu") == "cpu"
    assert harness.results_dir("cpu") == BENCH / "results" / "cpu"
    assert harness.results_dir("cpu", str(ROOT / "elsewhere")) == ROOT / "elsewhere"
    if torch.cuda.is_available():
        name = harness.device_name("cuda")
        assert isinstance(name, str) and name
        assert " " not in harness.results_dir("cuda").name


def test_pick_device_refuses_cuda_without_a_gpu():
    assert harness.pick_device("cpu") == torch.device("cpu")
    assert harness.pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            harness.pick_device("cuda")


# ------------------------------------------------------------------------------------------ timing
def test_time_calls_times_each_call_after_the_warmup():
    calls = []

    def two_ms():
        calls.append(None)
        time.sleep(0.002)
    times = harness.time_calls(two_ms, "cpu", warmup=2, iters=5)
    assert len(calls) == 7 and len(times) == 5
    assert all(2.0 <= t < 2000.0 for t in times), times  # milliseconds
    p20, p50, p80, mean = harness.percentiles(times)
    assert min(times) <= p20 <= p50 <= p80 <= max(times) and min(times) <= mean <= max(times)


def test_host_times_us_times_the_call_and_not_its_setup():
    seen = []
    times = harness.host_times_us(seen.append, iters=3, setup=lambda: time.sleep(0.03) or "fresh")
    assert seen == ["fresh"] * 3
    assert len(times) == 3 and all(0 < t < 30_000 for t in times), times  # microseconds, setup excluded


def test_percentiles_interpolate_linearly():
    p20, p50, p80, mean = harness.percentiles([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (p20, p50, p80, mean) == (pytest.approx(1.8), 3.0, pytest.approx(4.2), 3.0)
    assert harness.percentiles([7.0])[:3] == (7.0, 7.0, 7.0)


# ------------------------------------------------------------------------------------------ memory
def test_peak_tensor_memory_counts_live_storages_once():
    weight = torch.randn(256, 256)
    with PeakTensorMemory() as mem:
        a = torch.empty(MiB // 4)      # 1 MiB of fp32
        b = a * 2                      # 2 MiB live
        del a
        c = b + 1                      # b, c: 2 MiB
        view = c.view(-1)[:10]         # a view keeps c's storage, adds nothing
        del c
        _ = weight.t()                 # a view of memory from before the block: not counted
        e = torch.empty(MiB // 2)      # b, c (via view), e: 4 MiB
    assert mem.peak == 4 * MiB
    assert mem.current == 4 * MiB
    del b, view, e


def test_peak_memory_mb_on_cpu_adds_the_resident_bytes():
    def step():
        a = torch.empty(MiB // 4)      # 1 MiB
        return a * 2                   # 2 MiB alive at once
    peak, extra = peak_memory_mb(step, "cpu", resident_bytes=3 * MiB)
    assert (peak, extra) == (5.0, 2.0)


def test_saved_for_backward_counts_each_storage_once_without_the_excluded():
    x = torch.randn(1000, requires_grad=True)
    observed = []
    with saved_for_backward(exclude=[x], observe=lambda t, key: observed.append(t.shape)) as saved:
        y = x.exp()        # exp saves its output y
        z = y.sin()        # sin saves its input: the same storage as y
        (z * x).sum()      # mul saves z and x; x is excluded
    assert saved.bytes == 2 * 1000 * 4 and saved.tensors == 2
    assert len(observed) == 3  # y twice (exp, sin) and z


def test_saved_for_backward_counts_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        w = torch.randn(64, 32, requires_grad=True)
        with saved_for_backward(exclude=[w]) as saved:
            torch.relu(torch.randn(8, 64) @ w).sum()  # mm saves its input, relu its output
    assert saved.bytes == (8 * 64 + 8 * 32) * 4


# ------------------------------------------------------------------------------------------ writer
def test_provenance_has_device_versions_command_and_utc_time():
    meta = harness.provenance(str(BENCH / "table2.py"), ["--models", "zipformer-S", "--note", "a b"], "cpu")
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert {"triton", "zipformer_fast", "git_commit", "host", "threads"} <= set(meta)
    assert meta["command"] == "python bench/table2.py --models zipformer-S --note 'a b'"
    when = datetime.datetime.fromisoformat(meta["timestamp"])
    assert when.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) < 60


def test_result_table_writes_json_and_csv_rows_with_provenance(tmp_path):
    meta = harness.provenance(str(BENCH / "kernels.py"), ["--smoke"], "cpu")
    table = harness.ResultTable(tmp_path / "out", "demo")
    table.add(dict(op="a", p50=1.5, **meta))
    assert (tmp_path / "out" / "demo.csv").exists()  # written after each add
    table.add(dict(op="b", p50=2.0, extra="only here", **meta))
    with open(tmp_path / "out" / "demo.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["op"] for r in rows] == ["a", "b"] and rows[0]["extra"] == "" and rows[1]["extra"] == "only here"
    for r in rows:
        assert r["device"] == "cpu" and r["torch"] == torch.__version__
        assert r["command"] == "python bench/kernels.py --smoke" and r["timestamp"] == meta["timestamp"]
    assert json.loads((tmp_path / "out" / "demo.json").read_text()) == table.rows
    assert len(harness.ResultTable(tmp_path / "out", "demo", keep_existing=True).rows) == 2
    fixed = harness.ResultTable(tmp_path / "fixed", "demo", fields=["op", "p50"])
    fixed.add(dict(op="c", p50=3.0, **meta))
    assert (tmp_path / "fixed" / "demo.csv").read_text().splitlines() == ["op,p50", "c,3.0"]


def test_labelled_entries_of_two_runs_land_side_by_side(tmp_path):
    path = tmp_path / "labelled.json"
    harness.write_labelled_entry(path, "before", "the method", {"x": 1})
    harness.write_labelled_entry(path, "after", "the method", {"x": 2})
    assert json.loads(path.read_text()) == {"method": "the method", "before": {"x": 1}, "after": {"x": 2}}


# ----------------------------------------------------------------------------- rules for bench/
def _top_level_definitions():
    for path in sorted(BENCH.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield node.name, f"{path.relative_to(ROOT)}:{node.lineno}"


def test_no_helper_is_defined_twice_across_bench():
    """Each script's `main` is its entry point; every other top-level function or class name
    appears once in bench/, so a shared helper lives in one module that the others import."""
    places = {}
    for name, where in _top_level_definitions():
        if name != "main":
            places.setdefault(name, []).append(where)
    assert {n: w for n, w in places.items() if len(w) > 1} == {}


def test_every_bench_script_writes_through_out_dir():
    """One output option: no script declares --out, --output, -o or --json."""
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                flags = {a.value for a in node.args if isinstance(a, ast.Constant)}
                assert not flags & {"--out", "--output", "-o", "--json"}, (path.name, flags)


@pytest.mark.parametrize("how", ["file", "module"])
def test_a_script_runs_as_a_file_from_anywhere_and_as_a_module(how, tmp_path):
    cmd = ([sys.executable, str(BENCH / "table2.py"), "--help"] if how == "file"
           else [sys.executable, "-m", "bench.table2", "--help"])
    res = subprocess.run(cmd, cwd=tmp_path if how == "file" else ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "--out-dir" in res.stdout
