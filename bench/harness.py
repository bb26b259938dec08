"""What every benchmark shares: the device's name and results folder, one timing loop and its
statistics, and the writer of result files.

Every result file says where and how it was made: `provenance()` gives the device, the versions
(torch, triton, zipformer_fast, python, git commit), the host CPU and thread count, the UTC time
and the exact command line. Tables go to <out-dir>/<name>.csv and <name>.json (one row per
measurement, each row carrying that provenance), documents to <out-dir>/<name>.json.

The rest of the harness: memory (peak, bytes saved for backward) in bench/memory.py, parameters and
FLOPs in bench/flops.py, the paper's numbers in bench/paper.py.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import pathlib
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from typing import Callable, Iterable, List, Optional, Sequence

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MiB = 2.0 ** 20
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the --dtypes names


# ------------------------------------------------------------------------------------------ device
def pick_device(spec: str = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error, not a fallback."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r}: no CUDA device is available (use cpu)")
    return device


def device_name(device="cpu") -> str:
    """'cpu', or the GPU's name ('NVIDIA H100 80GB HBM3'). The CPU's model is in provenance()'s
    'host' (CPU results of every machine share bench/results/cpu/)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def results_dir(device="cpu", out_dir: Optional[str] = None) -> pathlib.Path:
    """`out_dir` when given, else bench/results/<device name as a folder name>."""
    if out_dir:
        return pathlib.Path(out_dir)
    return RESULTS / re.sub(r"[^A-Za-z0-9._-]+", "_", device_name(device)).strip("_")


def add_out_dir_argument(parser: argparse.ArgumentParser, default_help: str = "bench/results/<device>") -> None:
    """The one output option of every bench script: the folder its files go to (None when not
    given: the script picks its default, usually results_dir(device))."""
    parser.add_argument("--out-dir", default=None, help=f"folder for the output files (default: {default_help})")


# -------------------------------------------------------------------------------------- provenance
def _host_cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces this run: `python bench/<script>.py <arguments>` (`argv`, or
    this process's arguments when None)."""
    path = pathlib.Path(script).resolve()
    try:
        path = path.relative_to(ROOT)
    except ValueError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", str(path)] + [shlex.quote(str(a)) for a in args])


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def provenance(script: str, argv: Optional[Sequence[str]] = None, device="cpu") -> dict:
    """device, versions, host, threads, git commit, UTC time and command line of this run."""
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    import zipformer_fast
    return {"device": device_name(device), "torch": torch.__version__, "triton": triton_version,
            "zipformer_fast": zipformer_fast.__version__, "python": platform.python_version(),
            "host": f"{_host_cpu()}, {os.cpu_count()} cores", "threads": torch.get_num_threads(),
            "git_commit": _git_commit(), "timestamp": utc_now(), "command": command_line(script, argv)}


# ------------------------------------------------------------------------------------------ timing
def synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device="cpu", warmup: int = 1, iters: int = 10) -> List[float]:
    """Milliseconds of each of `iters` calls of fn after `warmup` untimed ones. On a GPU: CUDA
    events around each call (device time, synchronised before the next call); on a CPU:
    perf_counter."""
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def host_times_us(fn: Callable, iters: int, setup: Optional[Callable[[], object]] = None) -> List[float]:
    """Microseconds of host (Python) time of each of `iters` calls, never synchronising (GPU
    launches are asynchronous: this is what the CPU pays to issue them). With `setup`, each call
    is fn(setup()) and only fn is timed."""
    times = []
    for _ in range(iters):
        if setup is None:
            t0 = time.perf_counter_ns()
            fn()
        else:
            arg = setup()
            t0 = time.perf_counter_ns()
            fn(arg)
        times.append((time.perf_counter_ns() - t0) / 1e3)
    return times


def percentiles(values: Iterable[float]):
    """(p20, p50, p80, mean), percentiles by linear interpolation between the sorted values."""
    xs = sorted(values)

    def q(p):
        pos = p * (len(xs) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return q(0.2), q(0.5), q(0.8), statistics.fmean(xs)


# ------------------------------------------------------------------------------------------ writer
class ResultTable:
    """Rows of one benchmark in <out_dir>/<name>.csv and <name>.json, both rewritten after every
    add() so that a crash or a timeout keeps what was measured. `fields` fixes the CSV's columns
    (others stay in the JSON only); by default every key seen, in order. keep_existing=True starts
    from the rows already in the CSV."""

    def __init__(self, out_dir, name: str, fields: Optional[Sequence[str]] = None, keep_existing: bool = False):
        self.out_dir = pathlib.Path(out_dir)
        self.csv_path = self.out_dir / f"{name}.csv"
        self.json_path = self.out_dir / f"{name}.json"
        self.fields = list(fields) if fields else None
        self.rows: List[dict] = []
        if keep_existing and self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                self.rows = list(csv.DictReader(f))

    def add(self, *rows: dict) -> None:
        self.rows.extend(rows)
        self.write()

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fields = self.fields or list(dict.fromkeys(k for r in self.rows for k in r))
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        write_json(self.json_path, self.rows)


def write_json(path, doc) -> pathlib.Path:
    """One JSON document (a measurement that is not a table), folders created as needed."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def write_labelled_entry(path, label: str, method: str, entry: dict) -> pathlib.Path:
    """Store `entry` under `label` in the JSON document at `path`, keeping its other labels: runs
    of two code versions ("before" / "after") land side by side in one file."""
    path = pathlib.Path(path)
    doc = json.loads(path.read_text()) if path.exists() else {}
    doc["method"] = method
    doc[label] = entry
    return write_json(path, doc)
