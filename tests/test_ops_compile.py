"""torch.compile traces the fused ops without graph breaks (fullgraph=True) and the compiled
forward/backward equals eager.

The ops are torch.library custom ops with fake impls and registered autograd, so dynamo records
each as one opaque node. backend="aot_eager" exercises dynamo + AOTAutograd (where graph breaks
and missing fake/autograd registrations show up) without inductor's C++ compile time; the kernels
themselves run in the interpreter.
"""
import pytest
import torch

import zipformer_fast.ops as ops
from test_ops_helpers import assert_close
from zipformer_fast import use_backend

pytest.importorskip("triton")


def _block(x, ls, b, c, w, wb, ds_bias, mask):
    y = ops.bias_norm(x, ls, b)
    y = ops.bypass(x, y, c)
    y = ops.swoosh_l(y, compact_derivative=False)
    y = ops.activation_dropout_linear(y, w, wb, "SwooshR", mask)
    down = ops.simple_downsample(y, ds_bias)
    return ops.upsample_bypass(y, down * 2.0, 2, c)


def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    T, B, D = 7, 2, 20
    args = [torch.randn(T, B, D), torch.tensor(0.5), torch.randn(D), torch.rand(D), torch.randn(D, D) / 5,
            torch.randn(D), torch.randn(2)]
    args = [a.requires_grad_() for a in args]
    mask = (torch.rand(1, B, D) > 0.2).float() / 0.8
    torch._dynamo.reset()
    with use_backend("triton"):
        compiled = torch.compile(_block, fullgraph=True, backend="aot_eager")
        out = compiled(*args, mask)
        got = torch.autograd.grad(out.sum(), args)
        eager = _block(*args, mask)
        want = torch.autograd.grad(eager.sum(), args)
    assert_close(out, eager, torch.float32, "compiled output")
    for i, (a, e) in enumerate(zip(got, want)):
        assert_close(a, e, torch.float32, f"compiled grad {i}")
