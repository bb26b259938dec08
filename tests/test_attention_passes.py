"""How many times a Zipformer layer's attention computes its scores: launches of the score kernels
(kernels/attention_fwd._fwd_kernel, attention_bwd._bwd_kernel), each weighted by the fraction of
the B x H (batch, head) score matrices its grid covers, while the layer's weights and three uses
(non-linear attention on head 0, self-attention 1 and 2) run forward and backward in recompute mode.

Forward: the first use (non-linear attention) computes every head's row statistics on the way (a
statistics-only launch for the heads it does not read plus its own head-0 launch: one pass), then
one pass per self-attention: 3. Backward: one pass per self-attention use, each producing that
use's dv and its share of dq/dk/dp/dpos, and one head-0 walk for non-linear attention: 2 + 1/H,
the least autograd allows (a single pass for all three uses cannot exist: each use's dv must be
returned before the earlier uses' output gradients exist). On GPUs older than sm_90, non-linear
attention wider than 256 walks twice (its one walk spills there): 2 + 2/H.
"""
import pytest
import torch

pytest.importorskip("triton")

from test_attention import layer_uses, make_inputs, masks_for  # noqa: E402
from zipformer_fast.runtime import configure, use_backend  # noqa: E402
from zipformer_fast.kernels import attention_bwd, attention_fwd  # noqa: E402
from zipformer_fast.ops import attention as A  # noqa: E402


class CountingKernel:
    """Stands in for a @triton.jit kernel as the launchers call it (`kernel.run(*args, grid=...,
    warmup=False, **meta)`): records grid[1] / (B * H) per launch, then launches."""

    def __init__(self, kernel, log, B, H):
        self.kernel, self.log, self.BH = kernel, log, B * H

    def run(self, *args, grid, **kwargs):
        self.log.append(grid[1] / self.BH)
        return self.kernel.run(*args, grid=grid, **kwargs)


@pytest.mark.parametrize("masked", [False, True])
def test_score_passes_per_layer(monkeypatch, masked):
    T, B, H = 37, 2, 4
    kpm, am = masks_for(T, B, (37, 30), (8, 1)) if masked else (None, None)
    fwd_log, bwd_log = [], []
    monkeypatch.setattr(attention_fwd, "_fwd_kernel", CountingKernel(attention_fwd._fwd_kernel, fwd_log, B, H))
    monkeypatch.setattr(attention_bwd, "_bwd_kernel", CountingKernel(attention_bwd._bwd_kernel, bwd_log, B, H))
    t = make_inputs(T, B, H, hw=80)
    with use_backend("triton"), configure(attention_mode="recompute"):
        w = A.attention_weights(t["q"], t["k"], t["p"], t["pos"], kpm, am, True)
        outs = layer_uses(w, t)
    assert sum(fwd_log) == pytest.approx(3.0) and not bwd_log
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    assert sum(bwd_log) == pytest.approx(2.0 + 1.0 / H)
    assert sum(fwd_log) == pytest.approx(3.0)  # the backward recomputes nothing else
    assert all(t[n].grad is not None for n in ("q", "k", "p", "pos", "v1", "v2", "x"))


def test_wide_non_linear_attention_on_older_gpus_walks_twice(monkeypatch):
    T, B, H = 37, 2, 4
    bwd_log = []
    monkeypatch.setattr(attention_bwd, "_bwd_kernel", CountingKernel(attention_bwd._bwd_kernel, bwd_log, B, H))
    monkeypatch.setattr(attention_bwd, "one_walk", lambda bdv, device: bdv <= 64)
    t = make_inputs(T, B, H, hw=80)
    with use_backend("triton"), configure(attention_mode="recompute"):
        outs = layer_uses(A.attention_weights(t["q"], t["k"], t["p"], t["pos"], None, None, True), t)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    assert sum(bwd_log) == pytest.approx(2.0 + 2.0 / H)


def test_materialized_mode_passes(monkeypatch):
    """Materialised weights: statistics and W in one launch (two walks over the keys), uses are
    matmuls, one backward pass from the summed dW."""
    T, B, H = 37, 1, 2
    fwd_log, bwd_log = [], []
    monkeypatch.setattr(attention_fwd, "_fwd_kernel", CountingKernel(attention_fwd._fwd_kernel, fwd_log, B, H))
    monkeypatch.setattr(attention_bwd, "_bwd_kernel", CountingKernel(attention_bwd._bwd_kernel, bwd_log, B, H))
    t = make_inputs(T, B, H, hw=24)
    with use_backend("triton"), configure(attention_mode="materialize"):
        outs = layer_uses(A.attention_weights(t["q"], t["k"], t["p"], t["pos"], None, None), t)
    torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
    assert fwd_log == [1.0] and bwd_log == [1.0]
