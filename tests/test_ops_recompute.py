"""Ops whose fused path stores less for backward by recomputing in backward (training
memory): conv_chain (Conv-Embed's Swoosh -> conv chains, ConvNeXt branch with its Balancer),
gated_depthwise_conv1d (the convolution module's in_proj -> gate -> depthwise conv, with the Balancer
on the gate input), tanh_gate and mul_linear (NonlinAttention's products), bias_norm_bypass (the end
of a layer).

For each, with backend "triton" (swoosh / BiasNorm / bypass kernels in the interpreter) against the
reference composition: the output, the input gradient(s) and every parameter gradient, over odd
shapes, batch 1, padding masks, an active and an inactive Balancer, fp32 and fp16 (per-dtype
tolerances of test_ops_helpers: the reference is evaluated in fp32 on the same rounded inputs);
that the fused path ran (kernel launches counted, or the autograd node's name); that it saves
nothing but its inputs and parameters (and the reference saves more); the pure-PyTorch ones also
under CPU bf16 autocast against the reference under the same autocast; Balancer.draw consumes
Python's `random` exactly as Balancer.forward does.
"""
import random

import pytest
import torch

from zipformer_fast.ops.bias_norm_bypass import bias_norm_bypass
from zipformer_fast.ops.conv_chain import conv_chain
from zipformer_fast.ops.gated_conv import gated_depthwise_conv1d
from zipformer_fast.ops.gating import mul_linear, tanh_gate
from test_ops_helpers import assert_close, grads, kernel_calls, saved_tensors
from zipformer_fast import use_backend
from zipformer_fast.nn import Balancer
from zipformer_fast.ops.balancer import BalancerConfig

pytest.importorskip("triton")

# An active Balancer whose limits bind on random data (min_rms above, mean window narrow), so the
# gradient edit is large enough to notice.
ACTIVE = BalancerConfig(min_mean=-0.05, max_mean=0.05, min_rms=2.0, max_rms=4.0, grad_scale=0.5, channel_dim=1)


def _rand(*shape, gen, scale=1.0, dtype=torch.float32):
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).requires_grad_()


def _check(fused_fn, ref_fn, inputs, dtype, outputs=1, seed=1, out_dtype=None):
    """fused_fn under backend triton vs ref_fn in fp32 on fp32 copies of the (rounded) inputs;
    outputs must have out_dtype (default: dtype)."""
    g = torch.Generator().manual_seed(seed)
    with use_backend("triton"):
        out = fused_fn(*inputs)
    outs = out if isinstance(out, tuple) else (out,)
    assert len(outs) == outputs
    gouts = [torch.randn(o.shape, generator=g).to(o.dtype) for o in outs]
    got = grads(outs, inputs, gouts)
    plain = [t.detach().float().requires_grad_(t.requires_grad) if t is not None and t.is_floating_point() else t
             for t in inputs]
    with use_backend("reference"):
        want_out = ref_fn(*plain)
    want_outs = want_out if isinstance(want_out, tuple) else (want_out,)
    want = grads(want_outs, plain, [t.float() for t in gouts])
    for i, (o, w) in enumerate(zip(outs, want_outs)):
        assert o.dtype == (out_dtype or dtype), (i, o.dtype)
        assert_close(o, w, dtype, f"output {i}")
    for i, (a, e, t) in enumerate(zip(got, want, inputs)):
        if t is not None and t.requires_grad:
            assert a.dtype == t.dtype and a.shape == t.shape, (i, a.dtype, a.shape)
            assert_close(a, e, dtype, f"grad of input {i}")


def _node(out) -> str:
    return type(out.grad_fn).__name__


# ------------------------------------------------------------------------------- conv_chain
def _conv(cin, cout, k, gen, dtype, stride=1, padding=0, groups=1, bias=True, scale=0.3):
    w = _rand(cout, cin // groups, k, k, gen=gen, scale=scale, dtype=dtype)
    b = _rand(cout, gen=gen, scale=0.1, dtype=dtype) if bias else None
    return w, b, (stride, stride), (padding, padding), groups


def _convnext_stages(C, gen, dtype, balancer):
    return [("swoosh", "SwooshR"), ("conv", _conv(C, C, 7, gen, dtype, padding=3, groups=C)),
            ("conv", _conv(C, 3 * C, 1, gen, dtype)), ("balancer", balancer), ("swoosh", "SwooshL"),
            ("conv", _conv(3 * C, C, 1, gen, dtype, bias=False))]


def _chain_case(stages):
    """(flat tensors, rebuild(flat) -> stages): so that _check sees every parameter as an input."""
    flat, layout = [], []
    for kind, arg in stages:
        if kind == "conv":
            w, b, s, p, gr = arg
            layout.append((kind, (s, p, gr, b is not None)))
            flat += [w] if b is None else [w, b]
        else:
            layout.append((kind, arg))

    def rebuild(params):
        it, out = iter(params), []
        for kind, arg in layout:
            if kind == "conv":
                s, p, gr, has_b = arg
                w = next(it)
                out.append((kind, (w, next(it) if has_b else None, s, p, gr)))
            else:
                out.append((kind, arg))
        return out

    return flat, rebuild


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 5, 9, 7), (2, 8, 13, 10)])
def test_conv_chain_swoosh_then_strided_conv(dtype, shape):
    g = torch.Generator().manual_seed(0)
    N, C, H, W = shape
    x = _rand(*shape, gen=g, scale=2.0, dtype=dtype)
    flat, rebuild = _chain_case([("swoosh", "SwooshR"), ("conv", _conv(C, 6, 3, g, dtype, stride=2))])
    with kernel_calls("swoosh") as calls:
        _check(lambda x, *p: conv_chain(x, rebuild(p)), lambda x, *p: conv_chain(x, rebuild(p)),
               [x] + flat, dtype)
    assert calls == {"forward": 2, "backward": 1}, calls  # the activation is recomputed once


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("balancer", [None, ACTIVE])
@pytest.mark.parametrize("shape", [(1, 4, 11, 9), (2, 6, 8, 13)])
def test_conv_chain_convnext_branch(dtype, balancer, shape):
    g = torch.Generator().manual_seed(1)
    x = _rand(*shape, gen=g, scale=2.0, dtype=dtype)
    flat, rebuild = _chain_case(_convnext_stages(shape[1], g, dtype, balancer))
    with kernel_calls("swoosh") as calls:
        _check(lambda x, *p: conv_chain(x, rebuild(p), return_after=0),
               lambda x, *p: conv_chain(x, rebuild(p), return_after=0), [x] + flat, dtype, outputs=2)
    assert calls == {"forward": 4, "backward": 2}, calls


def test_conv_chain_balancer_changes_only_the_gradient():
    g = torch.Generator().manual_seed(2)
    x = _rand(2, 4, 9, 9, gen=g, scale=2.0)
    flat, rebuild = _chain_case(_convnext_stages(4, g, torch.float32, None))
    with use_backend("triton"):
        y0 = conv_chain(x, rebuild(flat))
        g0 = torch.autograd.grad(y0.sum(), x)[0]
        on = [(k, ACTIVE if k == "balancer" else a) for k, a in rebuild(flat)]
        y1 = conv_chain(x, on)
        g1 = torch.autograd.grad(y1.sum(), x)[0]
    assert torch.equal(y0, y1)
    assert (g0 - g1).abs().max() > 1e-3 * g0.abs().max()


def test_conv_chain_saves_only_its_input():
    g = torch.Generator().manual_seed(3)
    x = _rand(2, 4, 10, 9, gen=g) * 1.0
    stages = _convnext_stages(4, g, torch.float32, ACTIVE)
    params = {t.data_ptr() for k, a in stages if k == "conv" for t in a[:2] if t is not None}
    for backend in ("triton", "reference"):
        with use_backend(backend):
            (y, _), saved = saved_tensors(lambda: conv_chain(x, stages, return_after=0))
        new = [t for t in saved if t.untyped_storage().data_ptr() not in params | {x.data_ptr()}]
        if backend == "triton":
            assert _node(y) == "_ConvChainBackward"
            assert new == [], [(tuple(t.shape), t.dtype) for t in new]
        else:  # activation, depthwise output, pointwise output, its activation ...
            assert sum(t.untyped_storage().nbytes() for t in new) >= 8 * x.untyped_storage().nbytes()


def test_conv_chain_rejects_bad_stages():
    x = torch.randn(1, 2, 5, 5)
    with pytest.raises(ValueError, match="unknown stage"):
        conv_chain(x, [("relu", None)])
    with pytest.raises(ValueError, match="inner stage"):
        conv_chain(x, [("swoosh", "SwooshR")], return_after=0)


# ------------------------------------------------------------------- gated_depthwise_conv1d
def _gated_inputs(T, B, C, K, dtype, bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = _rand(T, B, C, gen=g, dtype=dtype)
    wi = _rand(2 * C, C, gen=g, scale=C ** -0.5, dtype=dtype)
    bi = _rand(2 * C, gen=g, scale=0.1, dtype=dtype) if bias else None
    wd = _rand(C, 1, K, gen=g, scale=0.3, dtype=dtype)
    bd = _rand(C, gen=g, scale=0.1, dtype=dtype) if bias else None
    mask = None
    if B > 1:
        lengths = torch.linspace(T, max(1, T // 2), B).round().long()
        mask = torch.arange(T)[None, :] >= lengths[:, None]
    return src, wi, bi, mask, wd, bd


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("balancer", [None, ACTIVE._replace(channel_dim=2)])
@pytest.mark.parametrize("T,B,C,K,bias", [(1, 1, 3, 3, True), (17, 3, 10, 7, True), (9, 2, 6, 31, False)])
def test_gated_depthwise_conv1d_matches_reference(dtype, balancer, T, B, C, K, bias):
    inputs = _gated_inputs(T, B, C, K, dtype, bias)
    fn = lambda *a: gated_depthwise_conv1d(*a, balancer)  # noqa: E731
    with use_backend("triton"):
        assert _node(fn(*inputs)) == "_GatedDepthwiseConv1dBackward"
    _check(fn, fn, list(inputs), dtype)


def test_gated_depthwise_conv1d_saves_only_its_input():
    src, wi, bi, mask, wd, bd = _gated_inputs(15, 3, 8, 5, torch.float32, True)
    src = src * 1.0
    keep = {t.data_ptr() for t in (src, wi, bi, wd, bd, mask)}
    for backend in ("triton", "reference"):
        with use_backend(backend):
            _, saved = saved_tensors(lambda: gated_depthwise_conv1d(src, wi, bi, mask, wd, bd, ACTIVE._replace(
                channel_dim=2)))
        new = [t for t in saved if t.untyped_storage().data_ptr() not in keep]
        if backend == "triton":
            assert new == [], [(tuple(t.shape), t.dtype) for t in new]
        else:  # in_proj's output (2D), sigmoid(s) and the gated input
            assert sum(t.untyped_storage().nbytes() for t in new) >= 4 * src.untyped_storage().nbytes()


def test_gated_depthwise_conv1d_padding_does_not_leak():
    src, wi, bi, mask, wd, bd = _gated_inputs(12, 2, 4, 5, torch.float32, True)
    with use_backend("triton"):
        y = gated_depthwise_conv1d(src, wi, bi, mask, wd, bd)
        (gs,) = torch.autograd.grad(y[0].sum(), src)  # sequence 0 only
        src2 = src.detach().clone()
        src2[mask.t()] = 1e3  # change only padded frames
        y2 = gated_depthwise_conv1d(src2.requires_grad_(), wi, bi, mask, wd, bd)
    assert torch.equal(y[~mask.unsqueeze(1).expand_as(y)], y2[~mask.unsqueeze(1).expand_as(y)])
    assert gs[mask.t()].abs().max() == 0


# ---------------------------------------------------------------------- tanh_gate / mul_linear
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 3), (13, 3, 37)])
def test_tanh_gate_matches_reference(dtype, shape):
    g = torch.Generator().manual_seed(4)
    x, s = _rand(*shape, gen=g, dtype=dtype), _rand(*shape, gen=g, scale=2.0, dtype=dtype)
    with use_backend("triton"):
        assert _node(tanh_gate(x, s)) == "_TanhGateBackward"
    _check(tanh_gate, tanh_gate, [x, s], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape,N,bias", [((1, 1, 3), 5, True), ((13, 3, 37), 20, True), ((6, 2, 9), 4, False)])
def test_mul_linear_matches_reference(dtype, shape, N, bias):
    g = torch.Generator().manual_seed(5)
    a, b = _rand(*shape, gen=g, dtype=dtype), _rand(*shape, gen=g, dtype=dtype)
    w = _rand(N, shape[-1], gen=g, scale=shape[-1] ** -0.5, dtype=dtype)
    bb = _rand(N, gen=g, scale=0.1, dtype=dtype) if bias else None
    with use_backend("triton"):
        assert _node(mul_linear(a, b, w, bb)) == "_MulLinearBackward"
    _check(mul_linear, mul_linear, [a, b, w, bb], dtype)


def test_gates_save_only_their_inputs():
    g = torch.Generator().manual_seed(6)
    x, s, y = (_rand(9, 2, 12, gen=g) * 1.0 for _ in range(3))
    w = _rand(7, 12, gen=g)
    for backend, fn, keep in (("triton", lambda: tanh_gate(x, s), (x, s)),
                              ("triton", lambda: mul_linear(x, y, w, None), (x, y, w))):
        with use_backend(backend):
            _, saved = saved_tensors(fn)
        assert {t.untyped_storage().data_ptr() for t in saved} <= {t.data_ptr() for t in keep}
    with use_backend("reference"):  # the reference also keeps tanh(s) / the product
        _, saved = saved_tensors(lambda: mul_linear(tanh_gate(x, s), y, w, None))
    assert len({t.untyped_storage().data_ptr() for t in saved} - {t.data_ptr() for t in (x, s, y, w)}) == 3


# ------------------------------------------------------------------------- bias_norm_bypass
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("scale_shape", ["D", "BD", "1BD"])
@pytest.mark.parametrize("shape", [(1, 1, 5), (13, 3, 37), (6, 2, 70)])
def test_bias_norm_bypass_matches_reference(dtype, scale_shape, shape):
    g = torch.Generator().manual_seed(7)
    T, B, D = shape
    xo, x = _rand(*shape, gen=g, dtype=dtype), _rand(*shape, gen=g, scale=3.0, dtype=dtype)
    ls = torch.tensor(0.7).requires_grad_()
    bias = _rand(D, gen=g, scale=0.5)
    c = torch.rand({"D": (D,), "BD": (B, D), "1BD": (1, B, D)}[scale_shape], generator=g)
    if scale_shape != "D" and B > 1:
        c[..., 0, :] = 0.0  # a skipped sequence
    c.requires_grad_()
    with kernel_calls("bias_norm_bypass") as fused, kernel_calls("bias_norm") as bn, kernel_calls("bypass") as bp:
        # fp32 scale: the output is promoted to fp32, as the reference's
        _check(bias_norm_bypass, bias_norm_bypass, [xo, x, ls, bias, c], dtype, out_dtype=torch.float32)
    assert fused == {"forward": 1, "backward": 1}, fused  # one pass each way, no recomputing launch
    assert bn == {"forward": 0, "backward": 0} and bp == {"forward": 0, "backward": 0}, (bn, bp)


def test_bias_norm_bypass_strided_inputs_and_half_scale():
    """x a channel-truncation view, x_orig (B, T, D)-major (transposed), scale in fp16: the kernels
    read the strides in place and the output stays fp16."""
    g = torch.Generator().manual_seed(11)
    T, B, D = 9, 3, 21
    x = _rand(T, B, D + 5, gen=g, scale=2.0, dtype=torch.float16).detach()[..., :D].requires_grad_()
    xo = _rand(B, T, D, gen=g, dtype=torch.float16).detach().transpose(0, 1).requires_grad_()
    ls = torch.tensor(-0.3).requires_grad_()
    bias = _rand(D, gen=g, scale=0.5)
    c = torch.rand(B, D, generator=g).half().requires_grad_()
    with kernel_calls("bias_norm_bypass") as fused:
        _check(bias_norm_bypass, bias_norm_bypass, [xo, x, ls, bias, c], torch.float16)
    assert fused == {"forward": 1, "backward": 1}, fused


def test_bias_norm_bypass_saves_only_its_inputs():
    g = torch.Generator().manual_seed(8)
    xo, x = _rand(11, 2, 16, gen=g) * 1.0, _rand(11, 2, 16, gen=g) * 1.0
    ls, bias, c = torch.tensor(0.2).requires_grad_(), _rand(16, gen=g), torch.rand(16).requires_grad_()
    with use_backend("triton"):
        _, saved = saved_tensors(lambda: bias_norm_bypass(xo, x, ls, bias, c))
    assert {t.untyped_storage().data_ptr() for t in saved} <= {t.data_ptr() for t in (xo, x, ls, bias, c)}


# --------------------------------------------------------------------------------- autocast
def test_pure_pytorch_ops_under_cpu_autocast_match_the_reference_composition():
    """bf16 autocast (CPU): the fused path casts like F.linear / F.conv1d would; compared with the
    reference composition under the same autocast (bf16 arithmetic is not run by the kernels here)."""
    src, wi, bi, mask, wd, bd = _gated_inputs(14, 2, 8, 5, torch.float32, True)
    g = torch.Generator().manual_seed(9)
    a, b = _rand(14, 2, 8, gen=g), _rand(14, 2, 8, gen=g)
    w = _rand(6, 8, gen=g, scale=0.3)
    cases = [(lambda *t: gated_depthwise_conv1d(*t, ACTIVE._replace(channel_dim=2)), [src, wi, bi, mask, wd, bd]),
             (mul_linear, [a, b, w, None]), (tanh_gate, [a, b])]
    for fn, inputs in cases:
        res = {}
        for backend in ("triton", "reference"):
            with use_backend(backend), torch.autocast("cpu", dtype=torch.bfloat16):
                out = fn(*inputs)
            gout = torch.ones_like(out)
            res[backend] = [out] + grads(out, inputs, gout)
        assert res["triton"][0].dtype == res["reference"][0].dtype
        for i, (u, v) in enumerate(zip(res["triton"], res["reference"])):
            if v is not None:
                assert u.dtype == v.dtype
                assert_close(u.float(), v.float(), torch.bfloat16, f"autocast result {i}")


# ---------------------------------------------------------------------------- Balancer.draw
def test_balancer_draw_consumes_random_like_forward():
    bal = Balancer(6, channel_dim=-1, prob=0.5)
    x = torch.randn(4, 6, requires_grad=True)
    random.seed(11)
    by_forward = [bal(x) is not x for _ in range(200)]
    random.seed(11)
    by_draw = [bal.draw(x.shape, x.device, True) is not None for _ in range(200)]
    assert by_forward == by_draw and 40 < sum(by_draw) < 160
    state = random.getstate()
    assert bal.draw(x.shape, x.device, requires_grad=False) is None  # no draw without a gradient
    assert random.getstate() == state
    cfg = Balancer(6, channel_dim=-1, prob=1.0).draw(x.shape, x.device)
    assert cfg.channel_dim == 1
    with pytest.raises(ValueError, match="expected 6 channels"):
        Balancer(6, channel_dim=-1, prob=1.0).draw((4, 5), x.device)
