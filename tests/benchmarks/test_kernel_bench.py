"""The per-op kernel benchmark (bench/kernels.py cases) as a pytest-benchmark suite.

CI runs only the smoke: every case of bench/cases_memory_bound.py at tiny sizes, reference
provider, forward + backward once, so the case definitions stay runnable. The real measurement is
opt-in, on a CUDA machine:

    ZIPFORMER_FAST_BENCH=1 pytest tests/benchmarks/test_kernel_bench.py --benchmark-only

which times forward+backward ("full") of every case at Zipformer-M sizes (B=30 x 30 s) in bf16 for
the providers triton, reference and torch_compile, synchronizing inside each timed call.
bench/kernels.py is the fuller tool (modes, percentiles, GB/s, peak memory, CSV/JSON).
"""
import os

import pytest
import torch

from bench import kernels as kernel_bench
from bench.cases_memory_bound import memory_bound_cases

FULL = os.environ.get("ZIPFORMER_FAST_BENCH") == "1" and torch.cuda.is_available()
SMOKE_CASES = memory_bound_cases(smoke=True)


def _step(case, provider, device, dtype):
    inputs = case.make(device, dtype)
    f = kernel_bench.provider_fn(case, provider)
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

    def run():
        out = f(*inputs)
        if out.requires_grad and leaves:
            torch.autograd.grad(out, leaves, torch.ones_like(out))
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return run


@pytest.mark.parametrize("case", SMOKE_CASES, ids=[f"{c.op}[{c.shape}]" for c in SMOKE_CASES])
def test_kernel_case_smoke(benchmark, case):
    out = benchmark.pedantic(_step(case, "reference", "cpu", torch.float32), rounds=1, iterations=1)
    assert torch.isfinite(out).all()


FULL_CASES = memory_bound_cases(smoke=False) if FULL else []


@pytest.mark.skipif(not FULL, reason="set ZIPFORMER_FAST_BENCH=1 on a CUDA machine for the full benchmark")
@pytest.mark.parametrize("provider", ["triton", "reference", "torch_compile"])
@pytest.mark.parametrize("case", FULL_CASES, ids=[f"{c.op}[{c.shape}]" for c in FULL_CASES])
def test_kernel_case_full(benchmark, case, provider):
    step = _step(case, provider, "cuda", torch.bfloat16)
    step()  # compile / autotune outside the timed rounds
    benchmark.pedantic(step, rounds=20, iterations=1, warmup_rounds=3)
