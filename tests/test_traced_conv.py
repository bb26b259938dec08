"""ops.traced_conv: a convolution whose gradient is one opaque node in compiled training graphs.

- Its autograd.Function gives F.conv1d / F.conv2d's outputs and every gradient, bit for bit in
  fp32 (it calls the same aten ops), and under autocast the same values as autocast's F.conv*.
- While tracing for training, the backward graph holds zipformer_fast::convolution_backward and
  no aten.convolution_backward (inductor's lowering of which pins the time axis).
- Eager calls and calls without gradients are F.conv* themselves.
- Compiled with inductor and dynamic shapes, a training step over new lengths does not recompile.
"""
import pytest
import torch
from torch.nn import functional as F

from zipformer_fast.ops import traced_conv
from zipformer_fast.ops.traced_conv import _TracedConv, conv

CASES = [  # (x shape, weight shape, bias, stride, padding, groups)
    ((3, 6, 17), (6, 1, 5), True, [1], [2], 6),         # the encoder's depthwise conv
    ((1, 6, 9), (6, 1, 3), False, [1], [0], 6),         # batch 1, no bias, no padding (causal conv)
    ((2, 3, 11, 9), (4, 3, 3, 3), True, [1, 2], [0, 1], 1),  # Conv-Embed's strided 2-D conv
    ((2, 4, 7, 8), (4, 1, 7, 7), True, [1, 1], [0, 3], 4),   # ConvNeXt's depthwise 7x7
]


def _plain(x, w, b, stride, padding, groups):
    fn = F.conv1d if w.dim() == 3 else F.conv2d
    return fn(x, w, b, stride, padding, 1, groups)


def _leaves(xs, ws, has_bias):
    torch.manual_seed(0)
    x = torch.randn(xs).requires_grad_()
    w = torch.randn(ws).requires_grad_()
    b = torch.randn(ws[0]).requires_grad_() if has_bias else None
    return x, w, b


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[0])))
def test_function_equals_plain_conv_forward_and_every_gradient(case):
    xs, ws, has_bias, stride, padding, groups = case
    x, w, b = _leaves(xs, ws, has_bias)
    y = _TracedConv.apply(x, w, b, stride, padding, groups, None)
    x2, w2, b2 = (t.detach().clone().requires_grad_() if t is not None else None for t in (x, w, b))
    y2 = _plain(x2, w2, b2, stride, padding, groups)
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    for t, t2 in zip((x, w, b), (x2, w2, b2)):
        if t is not None:
            torch.testing.assert_close(t.grad, t2.grad, rtol=0, atol=0)


def test_function_under_autocast_matches_autocast_conv():
    x, w, b = _leaves((2, 6, 13), (6, 1, 5), True)
    x2, w2, b2 = (t.detach().clone().requires_grad_() for t in (x, w, b))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = _TracedConv.apply(x, w, b, [1], [2], 6, torch.bfloat16)
        y2 = F.conv1d(x2, w2, b2, 1, 2, 1, 6)
    assert y.dtype == y2.dtype == torch.bfloat16
    torch.testing.assert_close(y, y2, rtol=0, atol=0)
    g = torch.randn_like(y)
    y.backward(g)
    y2.backward(g)
    for t, t2 in zip((x, w, b), (x2, w2, b2)):
        assert t.grad.dtype == torch.float32
        torch.testing.assert_close(t.grad, t2.grad, rtol=0, atol=0)


def test_eager_and_gradient_free_calls_are_the_plain_conv(monkeypatch):
    calls = []
    monkeypatch.setattr(_TracedConv, "apply", lambda *a: calls.append(a))
    x, w, b = _leaves((2, 6, 13), (6, 1, 5), True)
    conv(x, w, b, 1, 2, 6)
    monkeypatch.setattr(traced_conv, "is_compiling", lambda: True)
    with torch.no_grad():
        conv(x, w, b, 1, 2, 6)
    assert calls == []


def _backward_graph_targets(fn, *inputs):
    """The call targets of the backward graph AOTAutograd makes for fn (dynamo, dynamic shapes)."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    targets = []

    def fw(gm, example_inputs):
        return make_boxed_func(gm.forward)

    def bw(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return make_boxed_func(gm.forward)

    compiled = torch.compile(fn, backend=aot_autograd(fw_compiler=fw, bw_compiler=bw), fullgraph=True, dynamic=True)
    compiled(*inputs).sum().backward()
    return targets


def test_traced_training_graph_holds_the_opaque_gradient_node():
    torch._dynamo.reset()
    x, w, b = _leaves((2, 6, 13), (6, 1, 5), True)
    targets = _backward_graph_targets(lambda x, w, b: conv(x, w, b, 1, 2, 6), x, w, b)
    assert "zipformer_fast.convolution_backward.default" in targets
    assert not any(t.startswith("aten.convolution_backward") for t in targets)


def test_inductor_training_step_does_not_recompile_for_new_lengths():
    """Each step a new length T (and batch): one compilation in all."""
    pytest.importorskip("torch._inductor")
    torch._dynamo.reset()
    w = torch.randn(6, 1, 5, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    frames = []

    def counting_backend(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx
        frames.append(gm)
        return compile_fx(gm, example_inputs)

    step = torch.compile(lambda x: torch.tanh(conv(x, w, b, 1, 2, 6)), backend=counting_backend,
                         fullgraph=True, dynamic=True)
    for B, T in ((3, 40), (2, 57), (4, 33)):
        x = torch.randn(B, 6, T, requires_grad=True)
        y = step(x)
        y.sum().backward()
        ref_x = x.detach().clone().requires_grad_()
        torch.testing.assert_close(y, torch.tanh(F.conv1d(ref_x, w, b, 1, 2, 1, 6)))
    assert len(frames) == 1
