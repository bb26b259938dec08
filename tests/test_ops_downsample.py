"""Fused SimpleDownsample (kernels/downsample.py) against the reference, in the interpreter.

Output, input gradient and the gradient of the (ds,) softmax bias, per-dtype tolerances of
test_ops_helpers, for ds in 1, 2, 4, 8 with T a multiple of ds or not (the last frame repeated as
padding collects the padding's gradient), T = 1, batch 1, and a channel-truncation view as input
(read in place). Non-power-of-two ds runs the reference.
"""

import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls
from zipformer_fast import use_backend

pytest.importorskip("triton")
from zipformer_fast.ops import downsample as DS


def _make(T, B, C, ds, dtype, view=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C + (5 if view else 0), generator=g).to(dtype)
    x = x[..., :C] if view else x
    bias = torch.randn(ds, generator=g)
    return x.requires_grad_(), bias.requires_grad_()


def _check(x, bias, dtype):
    with use_backend("triton"), kernel_calls("downsample") as calls:
        out = DS.simple_downsample(x, bias)
        g = torch.randn(out.shape).to(out.dtype)
        got = grads(out, (x, bias), g)
    assert calls == {"forward": 1, "backward": 1}
    xr, br = x.detach().float().requires_grad_(), bias.detach().requires_grad_()
    want_out = DS.simple_downsample_reference(xr, br)
    want = grads(want_out, (xr, br), g.float())
    assert out.dtype == DS.simple_downsample_reference(x.detach(), bias.detach()).dtype
    assert_close(out, want_out, dtype, "output")
    assert got[0].dtype == x.dtype
    assert_close(got[0], want[0], dtype, "grad x")
    assert_close(got[1], want[1], dtype, "grad bias")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ds", [1, 2, 4, 8])
@pytest.mark.parametrize("T,B,C", [(1, 1, 5), (13, 3, 37), (70, 3, 100)])  # last: several tiles
def test_matches_reference(dtype, ds, T, B, C):
    _check(*_make(T, B, C, ds, dtype), dtype)


def test_truncated_view_input():
    x, bias = _make(11, 2, 30, 4, torch.float32, view=True)
    assert not x.is_contiguous()
    _check(x, bias, torch.float32)


def test_non_power_of_two_factor_uses_reference():
    x, bias = _make(10, 2, 7, 3, torch.float32)
    with use_backend("triton"), kernel_calls("downsample") as calls:
        out = DS.simple_downsample(x, bias)
    assert calls["forward"] == 0
    assert torch.equal(out, DS.simple_downsample_reference(x, bias))
