"""Figure 3 of the paper: encoder time and peak memory, Zipformer-S/M/L vs Conformer-S/M/L.

    python bench/encoder_latency.py                      # the paper's protocol on the default device
    python bench/encoder_latency.py --device cpu --batch-size 2 --duration 10
    python bench/encoder_latency.py --backends reference,triton,compile --dtypes fp32,bf16 \
        --modes infer,train --models zipformer-L

Protocol (paper, section 4.0.2): encoders only (`forward_encoder`: Conv-Embed + encoder), inference
mode, batches of 30 utterances of 30 s (3000 frames, all full length), time averaged over
iterations, peak memory. We report the mean (the paper's "averaged") and p20/p50/p80 of the
per-iteration times after `--warmup` untimed iterations. On CUDA, times come from CUDA events
around each iteration and memory from torch.cuda.max_memory_allocated() after
reset_peak_memory_stats() (so it includes the weights and input, like the paper's figure);
`peak_extra_mb` is the part above what was allocated before the call. On CPU, times come from
perf_counter and memory from bench/cpu_memory.py (tensor storages alive at once, plus weights and
input): a lower bound, not comparable with GPU figures.

Backends: `reference` (pure PyTorch ops), `triton` (zipformer_fast.use_backend("triton"): the
fused kernels), `compile` (torch.compile(fullgraph=True) of the reference model's forward_encoder;
its one-off compile time is reported as metric compile_s), `triton+compile` (the same
torch.compile with the fused kernels: they enter the graph as opaque custom ops). If fullgraph
tracing fails, the compile is retried with graph breaks allowed and metric `fullgraph` is 0. The
Conformer has no fused ops, so `triton` and `triton+compile` are skipped for it.

--cudagraphs (CUDA, inference): after warm-up the call is captured once in a CUDA graph
(torch.cuda.graph, static input) and the replays are timed; rows carry backend "<b>+cudagraphs".
A backend whose call cannot be captured (a host sync) records an error row for that variant.

dtypes: fp32, or fp16/bf16. Inference in half precision converts the weights and the input
(model.to(dtype)): what a deployment does and what halves weight memory. Training in half precision
keeps fp32 weights and runs the forward under torch.autocast, as icefall's --use-fp16 training does.

Training mode (`--modes train`): one step = zero_grad, forward_encoder, loss = mean(out^2) in
fp32, backward (no optimizer). Reported: step time, peak memory, and saved_act_mb: the bytes of the
tensors autograd saves for backward (each storage once, weights and input excluded), measured with
torch.autograd.graph.saved_tensors_hooks: a device-independent measure of activation memory (it
sees ctx.save_for_backward, not tensors a custom Function keeps as plain ctx attributes).

Output: a table on stdout; long-format rows (one per model, backend, dtype, mode, metric, with
p20/p50/p80, device name, versions, command) appended to <out-dir>/encoder_latency.csv and
rewritten into encoder_latency.json after every measurement (a crash or timeout keeps what was
measured); figure3.png with the paper's two panels (time vs WER, memory vs WER) unless --no-plot.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cpu_memory import PeakTensorMemory  # noqa: E402
from models import FIGURE3_MODELS, build_model, parse_name  # noqa: E402
from table2 import count_encoder_flops, count_params  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("reference", "triton", "compile", "triton+compile")
MODES = ("infer", "train")
FIELDS = ["model", "backend", "dtype", "mode", "metric", "unit", "p20", "p50", "p80", "mean", "n",
          "batch_size", "duration_s", "device", "threads", "torch", "triton", "zipformer_fast", "git_commit",
          "timestamp", "command"]
MB = 2.0 ** 20


# ----------------------------------------------------------------------------------------- context
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def device_slug(device: torch.device) -> str:
    """Folder name for results: 'cpu' or the GPU's name as bench/optimizer.py spells it
    ('NVIDIA_H100_80GB_HBM3'), so one device's results share one folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", device_name(device)).strip("_")


def environment() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = ""
    import zipformer_fast
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except Exception:
        commit = ""
    return {"torch": torch.__version__, "triton": triton_version,
            "zipformer_fast": zipformer_fast.__version__, "git_commit": commit}


# ------------------------------------------------------------------------------------- statistics
def percentiles(values):
    """p20, p50, p80 by linear interpolation, and the mean."""
    xs = sorted(values)

    def q(p):
        pos = p * (len(xs) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return q(0.2), q(0.5), q(0.8), statistics.fmean(xs)


# --------------------------------------------------------------------------------------- measuring
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_iterations(fn, device, warmup: int, iters: int):
    """Per-iteration milliseconds after `warmup` untimed calls (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
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


def capture_cuda_graph(fn, device, warmup: int):
    """fn captured once in a CUDA graph (after `warmup` calls on a side stream, as capture needs);
    returns the replay. Outputs live in the graph's static memory pool."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(max(1, warmup)):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize(device)
    return graph.replay


def peak_memory(fn, device, resident_bytes: int):
    """(peak MB including what was resident, peak MB above it) for one call of fn."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak / MB, (peak - before) / MB
    with PeakTensorMemory() as tracker:
        fn()
    return (resident_bytes + tracker.peak) / MB, tracker.peak / MB


def saved_activation_bytes(step, exclude_storages: set) -> int:
    """Bytes autograd saves for backward during `step()`, each storage once, weights excluded."""
    seen = {}

    def pack(t):
        if t.device.type != "meta":
            storage = t.untyped_storage()
            key = storage.data_ptr()
            if key not in exclude_storages:
                seen[key] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


# -------------------------------------------------------------------------------------- one case
class Case:
    """One (model, backend, dtype, mode) measurement on fixed random input."""

    def __init__(self, model_name, backend, dtype_name, mode, args, device, graphs: bool = False):
        self.model_name, self.backend, self.dtype_name, self.mode = model_name, backend, dtype_name, mode
        self.args, self.device, self.graphs = args, device, graphs

    @property
    def label(self) -> str:
        """The backend column: '<backend>' or '<backend>+cudagraphs'."""
        return self.backend + ("+cudagraphs" if self.graphs else "")

    def backend_context(self):
        import zipformer_fast
        if parse_name(self.model_name)[0] != "zipformer":
            return contextlib.nullcontext()
        return zipformer_fast.use_backend("triton" if self.backend.startswith("triton") else "reference")

    def run(self, model, emit):
        args, device, dtype = self.args, self.device, DTYPES[self.dtype_name]
        frames = int(round(args.duration * 100))
        torch.manual_seed(0)
        features = torch.randn(args.batch_size, frames, 80, device=device)
        lens = torch.full((args.batch_size,), frames, dtype=torch.int64, device=device)
        train = self.mode == "train"
        half = dtype != torch.float32
        if not train and half:
            model = model.to(dtype)
            features = features.to(dtype)
        model.train(train)
        forward = model.forward_encoder
        compiled = self.backend.endswith("compile")
        if compiled:
            forward = torch.compile(model.forward_encoder, dynamic=False, fullgraph=True)
        autocast = (torch.autocast(device.type, dtype=dtype) if (train and half)
                    else contextlib.nullcontext())

        def infer():
            with torch.inference_mode():
                return forward(features, lens)

        def train_step():
            model.zero_grad(set_to_none=True)
            with autocast:
                out, _ = forward(features, lens)
            loss = out.float().square().mean()
            loss.backward()

        fn = train_step if train else infer
        resident = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        resident += features.numel() * features.element_size()
        with self.backend_context():
            if compiled:
                t0 = time.perf_counter()
                try:
                    fn()
                    emit("fullgraph", "bool", [1.0])
                except Exception as e:  # a graph break: measure the compiled model with breaks
                    print(f"[encoder_latency] fullgraph compile failed ({type(e).__name__}: {str(e)[:200]}); "
                          "retrying with graph breaks allowed", file=sys.stderr, flush=True)
                    torch._dynamo.reset()
                    forward = torch.compile(model.forward_encoder, dynamic=False)
                    fn()
                    emit("fullgraph", "bool", [0.0])
                _sync(device)
                emit("compile_s", "s", [time.perf_counter() - t0])
            if self.graphs:
                fn = capture_cuda_graph(fn, device, args.warmup)
            times = time_iterations(fn, device, args.warmup, args.iters)
            emit("time_ms", "ms", times)
            model.zero_grad(set_to_none=True)  # last step's gradients must not count as "before"
            peak, extra = peak_memory(fn, device, resident)
            emit("peak_mem_mb", "MB", [peak])
            emit("peak_extra_mb", "MB", [extra])
            if train:
                weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
                weights.add(features.untyped_storage().data_ptr())
                emit("saved_act_mb", "MB", [saved_activation_bytes(train_step, weights) / MB])
        model.zero_grad(set_to_none=True)


def run_case(case: Case, results) -> bool:
    """Measure one case on a freshly built model (same seed, so the same weights every case: a
    dtype conversion or compilation cannot leak into the next case, and no second copy of the
    weights inflates peak memory). Returns False, and records an "error" row, on failure."""
    label = f"{case.model_name} {case.label} {case.dtype_name} {case.mode}"
    print(f"[encoder_latency] {label} ...", file=sys.stderr, flush=True)

    def emit(metric, unit, values):
        results.add(case.model_name, case.label, case.dtype_name, case.mode, metric, unit, values)
    ok = True
    try:
        torch.manual_seed(0)
        case.run(build_model(case.model_name, device=case.device), emit)
    except Exception as e:  # one broken case must not lose the others
        ok = False
        emit("error", "", [float("nan")])
        print(f"[encoder_latency] FAILED {label}: {type(e).__name__}: {e}", file=sys.stderr)
        traceback.print_exc()
    gc.collect()
    if case.device.type == "cuda":
        torch.cuda.empty_cache()
    if case.backend.endswith("compile"):
        torch._dynamo.reset()
    return ok


# ---------------------------------------------------------------------------------------- writing
class Results:
    def __init__(self, out_dir, append: bool, base: dict):
        os.makedirs(out_dir, exist_ok=True)
        self.csv_path = os.path.join(out_dir, "encoder_latency.csv")
        self.json_path = os.path.join(out_dir, "encoder_latency.json")
        self.base = base
        self.rows = []
        if append and os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        # Header written anew (with any kept rows) so appended rows always match it.
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(self.rows)
        self.new_rows = []

    def add(self, model, backend, dtype, mode, metric, unit, values):
        p20, p50, p80, mean = percentiles(values)
        row = dict(self.base, model=model, backend=backend, dtype=dtype, mode=mode, metric=metric,
                   unit=unit, p20=round(p20, 4), p50=round(p50, 4), p80=round(p80, 4),
                   mean=round(mean, 4), n=len(values),
                   timestamp=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        self.rows.append(row)
        self.new_rows.append(row)
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=FIELDS).writerow(row)
        with open(self.json_path, "w") as f:
            json.dump(self.rows, f, indent=1)


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Figure 3: encoder time and peak memory")
    ap.add_argument("--models", default=",".join(FIGURE3_MODELS))
    ap.add_argument("--backends", default="reference", help=f"comma-separated, from {BACKENDS}")
    ap.add_argument("--dtypes", default="fp32", help=f"comma-separated, from {tuple(DTYPES)}")
    ap.add_argument("--modes", default="infer", help=f"comma-separated, from {MODES}")
    ap.add_argument("--batch-size", type=int, default=30)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per utterance (100 frames/s)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations (default 3 on GPU, 1 on CPU)")
    ap.add_argument("--iters", type=int, default=None, help="timed iterations (default 10 on GPU, 3 on CPU)")
    ap.add_argument("--out-dir", default=None, help="default bench/results/<device>")
    ap.add_argument("--append", action="store_true", help="add to the existing CSV instead of starting anew")
    ap.add_argument("--no-flops", action="store_true", help="skip the GFLOPs count (meta device, ~1 s/model)")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--cudagraphs", action="store_true",
                    help="CUDA inference: also time each backend replayed from a CUDA graph")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's). On a shared, loaded CPU, 1 thread is "
                         "faster and steadier than several that wait for each other")
    args = ap.parse_args(argv)
    for name, allowed in (("backends", BACKENDS), ("dtypes", tuple(DTYPES)), ("modes", MODES)):
        values = [v for v in getattr(args, name).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            ap.error(f"--{name}: {bad or 'empty'} not in {allowed}")
        setattr(args, name, values)
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        try:
            parse_name(m)
        except ValueError as e:
            ap.error(str(e))
    if args.batch_size < 1 or args.duration < 0.1:
        ap.error("--batch-size must be >= 1 and --duration >= 0.1 s")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available (use --device cpu)")
    on_gpu = args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    args.iters = args.iters if args.iters is not None else (10 if on_gpu else 3)
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = args.out_dir or os.path.join(HERE, "results", device_slug(device))
    base = dict(environment(), batch_size=args.batch_size, duration_s=args.duration,
                device=device_name(device), threads=torch.get_num_threads(),
                command="python bench/encoder_latency.py " + " ".join(sys.argv[1:] if argv is None else argv))
    results = Results(out_dir, args.append, base)
    failures = 0
    for model_name in args.models:
        family = parse_name(model_name)[0]
        meta_model = build_model(model_name, device=torch.device("meta"))
        results.add(model_name, "-", "-", "static", "params_m", "M", [count_params(meta_model) / 1e6])
        if not args.no_flops:
            results.add(model_name, "-", "-", "static", "gflops_30s", "GFLOP",
                        [count_encoder_flops(meta_model) / 1e9])
        del meta_model
        for backend in args.backends:
            if backend.startswith("triton") and family != "zipformer":
                continue  # nothing fused in the baseline: "triton" would re-time the reference
            for dtype_name in args.dtypes:
                for mode in args.modes:
                    failures += not run_case(Case(model_name, backend, dtype_name, mode, args, device), results)
                    if args.cudagraphs and mode == "infer" and device.type == "cuda":
                        failures += not run_case(Case(model_name, backend, dtype_name, mode, args, device, True),
                                                 results)
    from make_readme_table import latency_table
    print(latency_table(results.new_rows))
    print(f"\nwrote {results.csv_path} and {results.json_path}")
    if not args.no_plot:
        from plot_figure3 import plot
        png = plot(results.rows, os.path.join(out_dir, "figure3.png"))
        print(f"wrote {png}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
