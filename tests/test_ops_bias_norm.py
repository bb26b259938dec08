"""Fused BiasNorm (kernels/bias_norm.py) against the reference, in the interpreter.

Output, input gradient, log_scale gradient and bias gradient, per-dtype tolerances of
test_ops_helpers, over odd channel counts, batch 1, a 2-D input, zero (padding) frames and a
row-strided input; the saved tensors are x plus one fp32 per row; the BiasNorm module's
limit_param_value constraint on log_scale gives the same gradients through either path.
"""
import math
import random

import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls, saved_tensors
from zipformer_fast import use_backend

pytest.importorskip("triton")
from zipformer_fast.ops import bias_norm as BN

SHAPES = [(1, 1, 5), (9, 3, 37), (4, 130), (40, 3, 64)]  # the last: several row tiles


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * 2 + 0.3)
    if len(shape) == 3 and shape[0] > 3:
        x[-2:] = 0.0  # padding frames: the rms then comes from the bias alone
    log_scale = torch.tensor(0.7)
    bias = torch.randn(shape[-1], generator=g) * 0.5
    return x.to(dtype).requires_grad_(), log_scale.requires_grad_(), bias.requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(dtype, shape):
    x, ls, b = _inputs(shape, dtype)
    g = torch.randn(shape).to(dtype)
    with use_backend("triton"), kernel_calls("bias_norm") as calls:
        y = BN.bias_norm(x, ls, b)
        got = grads(y, (x, ls, b), g)
    assert calls == {"forward": 1, "backward": 1}
    assert y.dtype == dtype and got[0].dtype == dtype and got[1].shape == ()
    xr, lsr, br = (t.detach().float().requires_grad_() for t in (x, ls, b))
    yr = BN.bias_norm_reference(xr, lsr, br)
    want = grads(yr, (xr, lsr, br), g.float())
    assert_close(y, yr, dtype, "output")
    for name, a, e in zip(("x", "log_scale", "bias"), got, want):
        assert_close(a, e, dtype, f"grad {name}")


def test_row_strided_input():
    view = torch.randn(12, 50)[:, :37]  # stride (50, 1): rows strided, channels contiguous
    ls, b = torch.tensor(0.2), torch.randn(37)
    with use_backend("triton"):
        y = BN.bias_norm(view, ls, b)
    assert_close(y, BN.bias_norm_reference(view, ls, b), torch.float32, "output")


def test_saves_only_x_itself_and_the_parameters():
    """The per-row rsqrt is recomputed by the backward kernel, not saved."""
    x, ls, b = _inputs((9, 3, 37), torch.float32)
    xin = x * 1.0
    with use_backend("triton"):
        _, saved = saved_tensors(lambda: BN.bias_norm(xin, ls, b))
    big = [t for t in saved if t is not ls and t is not b]
    assert len(big) == 1, [(t.dtype, t.shape) for t in big]
    assert big[0].data_ptr() == xin.data_ptr()  # x itself, not a copy


@pytest.mark.parametrize("log_scale_value", [2.0, -2.0])
def test_module_limit_param_value_still_applies(log_scale_value):
    """nn.BiasNorm wraps log_scale in limit_param_value([-1.5, 1.5]) before the op: outside the
    range the gradient sign is flipped (with probability 0.6). Same seed -> same gradient as the
    reference path, and (over several draws) at least one flip is seen."""
    from zipformer_fast.nn.bias_norm import BiasNorm

    m = BiasNorm(37).train()
    with torch.no_grad():
        m.log_scale.fill_(log_scale_value)
        m.bias.normal_(0, 0.5)
    x = torch.randn(5, 2, 37)
    # Choose g so that the plain gradient pushes log_scale further out (the case that is flipped).
    with torch.no_grad():
        g = -math.copysign(1.0, log_scale_value) * BN.bias_norm_reference(x, m.log_scale, m.bias)
    flipped = 0
    for seed in range(6):
        res = {}
        for backend in ("triton", "reference"):
            m.zero_grad()
            torch.manual_seed(seed)
            random.seed(seed)  # limit_param_value draws with Python's random, as icefall
            with use_backend(backend):
                (m(x) * g).sum().backward()
            res[backend] = (m.log_scale.grad.clone(), m.bias.grad.clone())
        assert_close(res["triton"][0], res["reference"][0], torch.float32, "log_scale grad")
        assert_close(res["triton"][1], res["reference"][1], torch.float32, "bias grad")
        with use_backend("reference"):
            ls = m.log_scale.detach().requires_grad_()
            plain = torch.autograd.grad((BN.bias_norm_reference(x, ls, m.bias) * g).sum(), ls)[0]
        flipped += int(torch.sign(plain) != torch.sign(res["triton"][0]))
    assert flipped >= 1
