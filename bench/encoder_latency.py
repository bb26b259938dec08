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
perf_counter and memory from bench/memory.py (tensor storages alive at once, plus weights and
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
p20/p50/p80, device name, versions, command, UTC time) in <out-dir>/encoder_latency.csv and
encoder_latency.json (default bench/results/<device>/), both rewritten after every measurement (a
crash or timeout keeps what was measured); figure3.png with the paper's two panels (time vs WER,
memory vs WER) unless --no-plot.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import pathlib
import sys
import time
import traceback

if __package__ in (None, ""):  # run as `python bench/encoder_latency.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.flops import count_encoder_flops, count_params  # noqa: E402
from bench.harness import (DTYPES, MiB, ResultTable, add_out_dir_argument, percentiles, pick_device,  # noqa: E402
                           provenance, results_dir, synchronize, time_calls, utc_now)
from bench.memory import peak_memory_mb, saved_for_backward  # noqa: E402
from bench.models import FIGURE3_MODELS, build_model, parse_name  # noqa: E402

BACKENDS = ("reference", "triton", "compile", "triton+compile")
MODES = ("infer", "train")
FIELDS = ["model", "backend", "dtype", "mode", "metric", "unit", "p20", "p50", "p80", "mean", "n",
          "batch_size", "duration_s", "device", "threads", "torch", "triton", "zipformer_fast", "git_commit",
          "timestamp", "command", "python", "host"]


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
                synchronize(device)
                emit("compile_s", "s", [time.perf_counter() - t0])
            if self.graphs:
                fn = capture_cuda_graph(fn, device, args.warmup)
            times = time_calls(fn, device, args.warmup, args.iters)
            emit("time_ms", "ms", times)
            model.zero_grad(set_to_none=True)  # last step's gradients must not count as "before"
            peak, extra = peak_memory_mb(fn, device, resident)
            emit("peak_mem_mb", "MB", [peak])
            emit("peak_extra_mb", "MB", [extra])
            if train:
                with saved_for_backward(exclude=[*model.parameters(), features]) as saved:
                    train_step()
                emit("saved_act_mb", "MB", [saved.bytes / MiB])
        model.zero_grad(set_to_none=True)


def run_case(case: Case, results) -> bool:
    """Measure one case on a freshly built model (same seed, so the same weights every case: a
    dtype conversion or compilation cannot leak into the next case, and no second copy of the
    weights inflates peak memory). Returns False, and records an "error" row, on failure."""
    label = f"{case.model_name} {case.label} {case.dtype_name} {case.mode}"
    print(f"[encoder_latency] {label} ...", file=sys.stderr, flush=True)

    def emit(metric, unit, values):
        results.add_metric(case.model_name, case.label, case.dtype_name, case.mode, metric, unit, values)
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


class Results(ResultTable):
    """encoder_latency.csv / .json in long format: one row per (model, backend, dtype, mode, metric)
    with p20/p50/p80/mean of the values and the run's provenance."""

    def __init__(self, out_dir, append: bool, base: dict):
        super().__init__(out_dir, "encoder_latency", FIELDS, keep_existing=append)
        self.base = base
        self.new_rows = []
        self.write()  # the header now, so a run that measures nothing still leaves a valid file

    def add_metric(self, model, backend, dtype, mode, metric, unit, values):
        p20, p50, p80, mean = percentiles(values)
        row = dict(self.base, model=model, backend=backend, dtype=dtype, mode=mode, metric=metric,
                   unit=unit, p20=round(p20, 4), p50=round(p50, 4), p80=round(p80, 4),
                   mean=round(mean, 4), n=len(values), timestamp=utc_now())
        self.new_rows.append(row)
        self.add(row)


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
    add_out_dir_argument(ap)
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
    try:
        args.device = pick_device(args.device)
    except (ValueError, RuntimeError) as e:
        ap.error(f"--device: {e}")
    on_gpu = args.device.type == "cuda"
    args.warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    args.iters = args.iters if args.iters is not None else (10 if on_gpu else 3)
    if args.iters < 1 or args.warmup < 0:
        ap.error("--iters must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    out_dir = results_dir(device, args.out_dir)
    base = dict(provenance(__file__, argv, device), batch_size=args.batch_size, duration_s=args.duration)
    base.pop("timestamp")  # per row, below
    results = Results(out_dir, args.append, base)
    failures = 0
    for model_name in args.models:
        family = parse_name(model_name)[0]
        meta_model = build_model(model_name, device=torch.device("meta"))
        results.add_metric(model_name, "-", "-", "static", "params_m", "M", [count_params(meta_model) / 1e6])
        if not args.no_flops:
            results.add_metric(model_name, "-", "-", "static", "gflops_30s", "GFLOP",
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
    from bench.make_readme_table import latency_table
    print(latency_table(results.new_rows))
    print(f"\nwrote {results.csv_path} and {results.json_path}")
    if not args.no_plot:
        from bench.plot_figure3 import plot
        png = plot(results.rows, out_dir / "figure3.png")
        print(f"wrote {png}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
