"""Fused activation -> dropout -> linear GEMMs and the linear -> activation epilogue
(kernels/activation_linear.py) against the reference, in the interpreter.

Output, input gradient, weight and bias gradients (per-dtype tolerances of test_ops_helpers; the
interpreter's tl.dot is exact, so fp32 needs no TF32 allowance here) over M, N, K that are not
multiples of the 64-wide interpreter tiles (including K, N < 16), batch 1, no bias, masks shared
over time (1, B, K), over batch (T, 1, K) and none, gradients for a subset of inputs, fp16 autocast,
and that the activation output is not saved for backward.
"""

import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls, saved_tensors
from zipformer_fast import use_backend

pytest.importorskip("triton")
from zipformer_fast.ops import activation_linear as AL

# T, B, K (in), N (out); the last spans 2 x 3 output tiles and 2 K steps of the 64-wide interpreter tiles.
SHAPES = [(1, 1, 7, 5), (9, 3, 70, 41), (5, 2, 33, 64), (40, 2, 70, 130)]


def _make(T, B, K, N, dtype, bias=True, mask="shared", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, B, K, generator=g) * 3).to(dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    if mask == "shared":
        m = ((torch.rand(1, B, K, generator=g) > 0.3).to(dtype) / 0.7).to(dtype)
    elif mask == "batch":
        m = ((torch.rand(T, 1, K, generator=g) > 0.3).to(dtype) / 0.7).to(dtype)
    elif mask == "full":
        m = ((torch.rand(T, B, K, generator=g) > 0.3).to(dtype) / 0.7).to(dtype)
    elif mask == "2d":  # (B, K), broadcast over T without a leading 1
        m = ((torch.rand(B, K, generator=g) > 0.3).to(dtype) / 0.7).to(dtype)
    elif mask == "strided":  # (1, B, K) that is not contiguous
        m = ((torch.rand(1, K, B, generator=g) > 0.3).to(dtype) / 0.7).to(dtype).transpose(1, 2)
    else:
        m = None
    return x, w, b, m


def _check(x, w, b, m, act, dtype, requires=(True, True, True)):
    inputs = [t.requires_grad_(r) if t is not None else None for t, r in zip((x, w, b), requires)]
    with use_backend("triton"), kernel_calls("activation_linear") as calls:
        y = AL.activation_dropout_linear(inputs[0], inputs[1], inputs[2], act, m)
        g = torch.randn(y.shape).to(y.dtype)
        got = grads(y, inputs, g)
    assert calls == {"forward": 1, "backward": 1}
    plain = [t.detach().float().requires_grad_() if t is not None else None for t in inputs]
    want_y = AL.activation_dropout_linear_reference(*plain, act, m.float() if m is not None else None)
    want = grads(want_y, plain, g.float())
    assert y.dtype == dtype
    assert_close(y, want_y, dtype, "output")
    for name, a, e, t, r in zip(("x", "weight", "bias"), got, want, inputs, requires):
        if t is None or not r:
            assert a is None
            continue
        assert a.dtype == t.dtype and a.shape == t.shape
        assert_close(a, e, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", ["SwooshL", "SwooshR"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(dtype, act, shape):
    _check(*_make(*shape, dtype), act, dtype)


@pytest.mark.parametrize("mask", ["none", "batch", "full", "2d", "strided"])
def test_mask_layouts_and_no_bias(mask):
    _check(*_make(6, 3, 40, 24, torch.float32, bias=False, mask=mask), "SwooshL", torch.float32)


@pytest.mark.parametrize("requires", [(True, False, False), (False, True, True)])
def test_gradient_subsets(requires):
    _check(*_make(6, 3, 40, 24, torch.float32), "SwooshR", torch.float32, requires)


def test_autocast_fp16_runs_the_gemm_in_fp16():
    x, w, b, m = _make(6, 2, 40, 24, torch.float32)
    with torch.autocast("cpu", dtype=torch.float16):
        with use_backend("triton"):
            y = AL.activation_dropout_linear(x, w, b, "SwooshL", m)
        yr = AL.activation_dropout_linear_reference(x, w, b, "SwooshL", m)
    assert y.dtype == yr.dtype == torch.float16
    assert_close(y, yr.float(), torch.float16, "output under autocast")


def test_autocast_accepts_half_input_with_fp32_weight():
    # Inside an autocast model the previous layer's output is already half while the weights stay
    # fp32 (the case that failed on the H100 in bf16 training); autocast casts the weight.
    x, w, b, m = _make(6, 2, 40, 24, torch.float32)
    xh = x.detach().half().requires_grad_()
    w.requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        with use_backend("triton"):
            y = AL.activation_dropout_linear(xh, w, b, "SwooshL", m.half())
        yr = AL.activation_dropout_linear_reference(xh, w, b, "SwooshL", m.half())
    assert y.dtype == yr.dtype == torch.float16
    assert_close(y, yr.float(), torch.float16, "half input, fp32 weight under autocast")
    y.float().sum().backward()
    assert w.grad is not None and w.grad.dtype == torch.float32 and xh.grad.dtype == torch.float16


def test_dtype_mismatch_outside_autocast_is_an_error():
    x, w, b, m = _make(2, 1, 8, 4, torch.float32)
    with use_backend("triton"), pytest.raises(TypeError, match="autocast"):
        AL.activation_dropout_linear(x, w.half(), b, "SwooshL", m)


def test_activation_output_is_not_saved():
    x, w, b, m = _make(9, 3, 70, 41, torch.float32)
    xin = (x * 1.0).requires_grad_()
    w.requires_grad_()
    for backend in ("triton", "reference"):
        with use_backend(backend):
            _, saved = saved_tensors(lambda: AL.activation_dropout_linear(xin, w, b, "SwooshL", m))
        big = [t for t in saved if t.shape == x.shape and t.data_ptr() != xin.data_ptr()]
        if backend == "triton":
            assert big == [] and any(t.data_ptr() == xin.data_ptr() for t in saved)
        else:  # the reference stores the activation output (and more)
            assert big


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", ["SwooshL", "SwooshR"])
def test_linear_swoosh_epilogue_in_inference(dtype, act):
    x, w, b, _ = _make(9, 3, 70, 41, dtype)
    with torch.no_grad(), use_backend("triton"), kernel_calls("activation_linear", ("linear_act_forward",)) as calls:
        y = AL.linear_swoosh(x, w, b, act)
    assert calls["linear_act_forward"] == 1
    want = AL.linear_swoosh_reference(x.float(), w.float(), b.float(), act)
    assert_close(y, want, dtype, "output")


def test_linear_swoosh_with_gradients_uses_the_reference():
    x, w, b, _ = _make(4, 2, 20, 12, torch.float32)
    w.requires_grad_()
    with use_backend("triton"), kernel_calls("activation_linear", ("linear_act_forward",)) as calls:
        y = AL.linear_swoosh(x, w, b, "SwooshL")
    assert calls["linear_act_forward"] == 0 and y.requires_grad
