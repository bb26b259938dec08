"""The encoder benchmark (paper Figure 3) as a pytest-benchmark suite.

CI runs only the smoke case: the tiny zipformer-XS / conformer-XS on CPU, one timed call each, to
keep the suite's wiring working. The real measurement is opt-in, on a CUDA machine:

    ZIPFORMER_FAST_BENCH=1 pytest tests/benchmarks/test_encoder_bench.py --benchmark-only

which times forward_encoder on the paper's batch (30 utterances x 30 s, inference mode) for
Zipformer-S/M/L (reference and triton backends) and Conformer-S/M/L, synchronizing the device
inside each timed call. bench/encoder_latency.py is the fuller tool (memory, training, CSV, plot).
"""
import os

import pytest
import torch

import zipformer_fast
from bench.harness import device_name
from bench.models import FIGURE3_MODELS, build_model

FULL = os.environ.get("ZIPFORMER_FAST_BENCH") == "1" and torch.cuda.is_available()


def _inputs(batch, seconds, device):
    frames = int(seconds * 100)
    torch.manual_seed(0)
    return (torch.randn(batch, frames, 80, device=device),
            torch.full((batch,), frames, dtype=torch.int64, device=device))


@pytest.mark.parametrize("name", ["zipformer-XS", "conformer-XS"])
def test_encoder_forward_smoke(benchmark, name):
    torch.manual_seed(0)
    model = build_model(name)
    features, lens = _inputs(2, 0.5, "cpu")

    def run():
        with torch.inference_mode(), zipformer_fast.use_backend("reference"):
            return model.forward_encoder(features, lens)
    out, out_lens = benchmark.pedantic(run, rounds=1, iterations=1)
    assert out.shape[0] == 2 and out.shape[1] == int(out_lens.max())
    assert torch.isfinite(out).all()


CUDA_CASES = [(m, b) for m in FIGURE3_MODELS for b in ("reference", "triton")
              if b == "reference" or m.startswith("zipformer")]


@pytest.mark.skipif(not FULL, reason="opt-in: ZIPFORMER_FAST_BENCH=1 on a CUDA machine")
@pytest.mark.parametrize("name,backend", CUDA_CASES)
def test_encoder_forward_cuda(benchmark, name, backend):
    torch.manual_seed(0)
    model = build_model(name, device=torch.device("cuda"))
    features, lens = _inputs(30, 30.0, "cuda")
    benchmark.group = f"encoder {name}"
    benchmark.extra_info.update(device=device_name("cuda"), batch=30, seconds=30.0)

    def run():
        with torch.inference_mode(), zipformer_fast.use_backend(backend):
            out = model.forward_encoder(features, lens)
        torch.cuda.synchronize()
        return out
    out, _ = benchmark.pedantic(run, rounds=10, warmup_rounds=3, iterations=1)
    assert torch.isfinite(out).all()
