"""Per-op benchmark: each fused op against its reference and torch.compile of the reference.

For every case (bench/cases_memory_bound.py; attention cases from bench/cases_attention.py with
--attention) and provider (triton | reference | torch_compile) and mode (forward | backward | full):
time (ms, p20/p50/p80), peak memory above the inputs (MB), and for memory-bound ops the achieved
GB/s, % of the device's peak bandwidth (bytes = inputs read once + outputs written once, see
cases_memory_bound) and the copy floor: a `copy` provider row per case and mode times a device
copy moving the same bytes (read + write), and `pct_of_copy` = copy time / op time x 100 (100 =
as fast as a copy of that volume: the floor for a memory-bound op). Also per call: `host_us`
(CPU time of one call without synchronising: what the Python side costs, which small kernels
cannot hide) and `launches` (aten ops + Triton kernels, bench/launch_counter.py). A `copy` row of
1 GiB gives the achievable bandwidth for scale.

    python bench/kernels.py [--dtypes bf16,fp16,fp32] [--ops swoosh_l,bias_norm,...] [--attention [--attention-only]]
                            [--providers triton,reference,torch_compile] [--time-budget 60 (0: all)]
                            [--out-dir bench/results/<device>] [--smoke]

Output: one long-format table, rows (op, provider, mode, metric, p20, p50, p80, shape, dtype,
and the run's provenance: device, versions, command, UTC time), in <out-dir>/kernels.{csv,json}
(default bench/results/<device>/), rewritten after each case so a timeout keeps what was
measured. GPU timing: triton.testing.do_bench_cudagraph (the call is captured in a
CUDA graph and replayed, so launch gaps between small kernels do not count; metric `ms`); where a
call cannot be captured, do_bench (metric `ms_eager`, L2 flushed between runs).

Sections: the memory-bound ops and GEMMs (cases_memory_bound, `memory_bound_rows`) and the
attention cases (cases_attention, `attention_rows`) are separate functions, so each can evolve on
its own.
--smoke (CPU/CI): tiny shapes, reference and (with TRITON_INTERPRET=1) triton, < 30 s.
"""
import argparse
import os
import pathlib
import statistics
import sys
import time

if __package__ in (None, ""):  # run as `python bench/kernels.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import (DTYPES, ResultTable, add_out_dir_argument, host_times_us, percentiles,  # noqa: E402
                           provenance, results_dir, synchronize, time_calls)
from bench.memory import peak_memory_mb  # noqa: E402
from zipformer_fast import use_backend  # noqa: E402

MODES = ("forward", "backward", "full")
PROVIDERS = ("triton", "reference", "torch_compile")
# Peak DRAM bandwidth (bytes/s) by device-name fragment, when the properties do not give it.
PEAK_BW = {"H100 80GB HBM3": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "H200": 4.8e12,
           "A100-SXM4-80GB": 2.039e12, "A100": 1.555e12}


def peak_bandwidth(device: str):
    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(0)
    clock, bus = getattr(props, "memory_clock_rate", 0), getattr(props, "memory_bus_width", 0)
    if clock and bus:  # kHz, bits; double data rate
        return 2 * clock * 1e3 * bus / 8
    name = props.name
    return next((bw for k, bw in PEAK_BW.items() if k in name), None)


def timings(fn, device: str, smoke: bool, graph: bool = False):
    """(p20, p50, p80) in ms; graph=True: the call replayed from a CUDA graph (triton.testing's
    do_bench flushes L2 between runs; the CPU uses the harness's loop)."""
    if device == "cuda":
        import triton.testing
        if graph:
            return tuple(triton.testing.do_bench_cudagraph(fn, rep=40, quantiles=[0.2, 0.5, 0.8]))
        return tuple(triton.testing.do_bench(fn, warmup=10, rep=40, quantiles=[0.2, 0.5, 0.8]))
    return percentiles(time_calls(fn, device, warmup=1, iters=3 if smoke else 10))[:3]


def peak_mb(fn, device: str):
    """Peak MB above the inputs of one call, on CUDA (a CPU dispatch mode would retrace compiled
    providers, so CPU rows have none)."""
    return peak_memory_mb(fn, device)[1] if device == "cuda" else None


def graph_timings(fn, device: str, smoke: bool):
    """(metric, p20, p50, p80): CUDA-graph timing ("ms"), or "ms_eager" where capture fails."""
    if device == "cuda":
        try:
            return ("ms", *timings(fn, device, smoke, graph=True))
        except Exception as e:  # e.g. a host sync inside the call
            print(f"  (CUDA graph capture failed: {type(e).__name__}; timing eagerly)", flush=True)
            torch.cuda.synchronize()
            return ("ms_eager", *timings(fn, device, smoke))
    return ("ms", *timings(fn, device, smoke))


def host_us(fn, device: str, n: int = 50):
    """Median CPU microseconds of one call, not synchronising between calls (launches are async)."""
    fn()
    us = statistics.median(host_times_us(fn, n))
    synchronize(device)
    return us


def launches_per_call(fn) -> int:
    """aten ops that launch work + Triton kernels of one call (bench/launch_counter.py)."""
    from bench.launch_counter import counting

    with counting() as c:
        fn()
    return sum(c["aten"].values()) + sum(c["triton"].values())


def copy_floor(moved_bytes: int, device: str, smoke: bool):
    """(p20, p50, p80) ms of a device copy that reads and writes moved_bytes in total."""
    n = max(1, moved_bytes // 2)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return graph_timings(lambda: dst.copy_(src), device, smoke)[1:]


def nbytes(ts):
    return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))


_COMPILED = {}


def provider_fn(case, provider):
    if provider == "torch_compile":
        key = (case.op, case.shape)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(case.reference, dynamic=False)
        fn = _COMPILED[key]
        return lambda *a: fn(*a)
    backend = provider

    def run(*a):
        with use_backend(backend):
            return case.fused(*a)
    return run


def bench_case(case, provider, dtype, device, smoke, peak_bw):
    """Rows for one (case, provider, dtype)."""
    inputs = case.make(device, dtype)
    f = provider_fn(case, provider)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    rows = []
    out = f(*inputs)
    g = torch.randn_like(out)
    trainable = out.requires_grad and leaves

    def fwd():
        return f(*inputs)

    def bwd():
        torch.autograd.grad(out, leaves, g, retain_graph=True)

    def full():
        torch.autograd.grad(f(*inputs), leaves, g)

    modes = {"forward": fwd}
    if trainable:
        modes.update(backward=bwd, full=full)
    fwd_bytes = nbytes(inputs) + nbytes([out])
    bwd_bytes = nbytes([out]) + nbytes(inputs) + nbytes(leaves)
    for mode, fn in modes.items():
        metric, p20, p50, p80 = graph_timings(fn, device, smoke)
        rows.append((mode, metric, p20, p50, p80))
        us = host_us(fn, device, 5 if smoke else 50)
        rows.append((mode, "host_us", us, us, us))
        if provider != "torch_compile":  # a dispatch mode would retrace the compiled function
            n = launches_per_call(fn)
            rows.append((mode, "launches", n, n, n))
        mb = peak_mb(fn, device)
        if mb is not None:
            rows.append((mode, "peak_MB", mb, mb, mb))
        if case.memory_bound:
            moved = {"forward": fwd_bytes, "backward": bwd_bytes, "full": fwd_bytes + bwd_bytes}[mode]
            gbs = [moved / (t * 1e-3) / 1e9 for t in (p80, p50, p20)]  # slower time -> lower GB/s
            rows.append((mode, "GB_s", *gbs))
            if peak_bw:
                rows.append((mode, "pct_peak_bw", *[100 * x * 1e9 / peak_bw for x in gbs]))
            if provider == "triton":  # the floor, once per case and mode: a copy of the same volume
                c20, c50, c80 = copy_floor(moved, device, smoke)
                rows.append((mode, "copy_ms", c20, c50, c80))
                rows.append((mode, "pct_of_copy", *[100 * c50 / t for t in (p80, p50, p20)]))
        elif case.flops is not None and mode == "forward":
            fl = case.flops(inputs)
            rows.append((mode, "TFLOP_s", *[fl / (t * 1e-3) / 1e12 for t in (p80, p50, p20)]))
    del out, g
    return rows


def copy_rows(device, peak_bw):
    n = (1 << 30) // 4 if device == "cuda" else 1 << 20
    x = torch.empty(n, device=device)
    y = torch.empty_like(x)
    p20, p50, p80 = timings(lambda: y.copy_(x), device, True)
    gbs = [2 * n * 4 / (t * 1e-3) / 1e9 for t in (p80, p50, p20)]
    rows = [("copy", "torch", "forward", "GB_s", *gbs, f"n={n}", "fp32")]
    if peak_bw:
        rows.append(("copy", "torch", "forward", "pct_peak_bw", *[100 * v * 1e9 / peak_bw for v in gbs], f"n={n}", "fp32"))
    return rows


# The attention question first: fwd+bwd of the fused modes against the reference, then torch.compile
# of the reference (its compile is slow), then forward only. A GPU session's time budget usually
# ends inside this list, so the order decides what gets measured.
ATTENTION_ORDER = [("fwdbwd", "reference"), ("fwdbwd", "fused_recompute"), ("fwdbwd", "fused_materialize"),
                   ("fwdbwd", "reference_compile"), ("fwd", "reference"), ("fwd", "fused_recompute"),
                   ("fwd", "fused_materialize"), ("fwd", "flex_forward"), ("fwd", "reference_compile"),
                   ("bwd", "reference"), ("bwd", "fused_recompute"), ("bwd", "fused_materialize"),
                   ("bwd", "reference_compile")]


def attention_rows(device, smoke, providers, out_of_time=lambda: False, skipped=None):
    """The attention cases (bench/cases_attention.py), if present, in the same table; yields one
    batch of rows per (case, pass, impl) so that the caller can write them as they come."""
    from bench import cases_attention as CA

    kw = dict(Ts=(16,), batch=2, stacks=(0,)) if smoke else {}
    all_cases = CA.attention_cases(device, **kw)
    for pass_, impl in ATTENTION_ORDER:
        if impl not in CA.IMPLS or pass_ not in CA.PASSES or (smoke and impl != "reference"):
            continue
        for case in all_cases:
            if out_of_time():
                if skipped is not None:
                    skipped.append(f"{case.name}[T={case.T}] {impl} {pass_}")
                continue
            step = case.make(impl, pass_)
            p20, p50, p80 = timings(step, device, smoke)
            mode = {"fwd": "forward", "bwd": "backward", "fwdbwd": "full"}.get(pass_, pass_)
            shape = f"T={case.T},B={case.B},H={case.H},D={case.D}"
            dtype = str(case.dtype).replace("torch.", "")
            rows = [(case.name, impl, mode, "ms", p20, p50, p80, shape, dtype)]
            print(f"{case.name:28s} {shape:40s} {dtype:9s} {impl:18s} {mode:8s} ms p50={p50:10.4f}", flush=True)
            mb = peak_mb(step, device)
            if mb is not None:
                rows.append((case.name, impl, mode, "peak_MB", mb, mb, mb, shape, dtype))
            del step
            yield rows


def memory_bound_rows(device, smoke, dtypes, providers, wanted, peak_bw, out_of_time, skipped):
    """The memory-bound ops and GEMMs (bench/cases_memory_bound.py); yields one batch of rows
    (op, provider, mode, metric, p20, p50, p80, shape, dtype) per case."""
    from bench.cases_memory_bound import memory_bound_cases

    for case in memory_bound_cases(smoke=smoke or device == "cpu"):
        if wanted and case.op not in wanted:
            continue
        batch = []
        for dt in dtypes:
            for prov in providers:
                if out_of_time():
                    skipped.append(f"{case.op}[{case.shape}] {dt} {prov}")
                    continue
                try:
                    res = bench_case(case, prov, DTYPES[dt], device, smoke, peak_bw)
                except Exception as e:  # one failing provider must not hide the others' numbers
                    print(f"FAILED {case.op} {prov} {dt}: {e!r}", flush=True)
                    batch.append((case.op, prov, "forward", "error", float("nan"), float("nan"), float("nan"),
                                  case.shape, dt))
                    continue
                for mode, metric, p20, p50, p80 in res:
                    op_prov = "copy" if metric == "copy_ms" else prov
                    batch.append((case.op, op_prov, mode, "ms" if metric == "copy_ms" else metric, p20, p50, p80,
                                  case.shape, dt))
                    if metric in ("ms", "ms_eager", "pct_of_copy", "host_us", "launches"):
                        print(f"{case.op:28s} {case.shape:40s} {dt:5s} {prov:14s} {mode:8s} {metric:12s} "
                              f"p50={p50:10.4f}", flush=True)
                if device == "cuda":
                    torch.cuda.empty_cache()
        yield batch


FIELDS = ("op", "provider", "mode", "metric", "p20", "p50", "p80", "shape", "dtype", "device", "torch", "triton",
          "command", "zipformer_fast", "python", "host", "threads", "git_commit", "timestamp")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--attention", action="store_true", help="also run bench/cases_attention.py (first)")
    ap.add_argument("--attention-only", action="store_true", help="with --attention: skip the memory-bound ops")
    ap.add_argument("--time-budget", type=float, default=60.0,
                    help="stop starting new runs after S seconds (0: no limit); the default fits gpu_check.sh's 75 s cap")
    add_out_dir_argument(ap)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not a.smoke else "cpu"
    providers = [p for p in a.providers.split(",") if p]
    if device == "cpu":
        providers = [p for p in providers if p == "reference" or (p == "triton" and os.environ.get("TRITON_INTERPRET") == "1")]
        dtypes = ["fp32"]
    else:
        dtypes = [d for d in a.dtypes.split(",") if d]
    meta = provenance(__file__, argv, device)
    if not meta["triton"]:
        providers = [p for p in providers if p != "triton"]
    table = ResultTable(results_dir(device, a.out_dir), "kernels", FIELDS)
    peak_bw = peak_bandwidth(device)

    def add(op, provider, mode, metric, p20, p50, p80, shape, dtype):
        table.rows.append(dict(op=op, provider=provider, mode=mode, metric=metric, p20=round(p20, 5),
                               p50=round(p50, 5), p80=round(p80, 5), shape=shape, dtype=dtype, **meta))

    for r in copy_rows(device, peak_bw):
        add(*r)
    wanted = {o for o in a.ops.split(",") if o}
    t_start = time.time()
    skipped = []

    def out_of_time():
        return bool(a.time_budget) and time.time() - t_start > a.time_budget

    if a.attention:  # first: the attention targets, then the memory-bound ops in the time left
        for batch in attention_rows(device, a.smoke or device == "cpu", providers, out_of_time, skipped):
            for r in batch:
                add(*r)
            table.write()
    if not a.attention_only:
        for batch in memory_bound_rows(device, a.smoke, dtypes, providers, wanted, peak_bw, out_of_time, skipped):
            for r in batch:
                add(*r)
            table.write()
    if skipped:
        print(f"time budget reached: skipped {len(skipped)} runs: {skipped}")
    table.write()
    print(f"wrote {len(table.rows)} rows to {table.csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
