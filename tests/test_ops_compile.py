"""torch.compile traces the fused ops without graph breaks (fullgraph=True) and the compiled
forward/backward equals eager.

The ops are torch.library custom ops with fake impls and registered autograd, so dynamo records
each as one opaque node. backend="aot_eager" exercises dynamo + AOTAutograd (where graph breaks
and missing fake/autograd registrations show up) without inductor's C++ compile time; the kernels
themselves run in the interpreter.
"""
import pytest
import torch

from zipformer_fast.ops.activation_linear import activation_dropout_linear
from zipformer_fast.ops.bias_norm import bias_norm
from zipformer_fast.ops.bypass import bypass, upsample_bypass
from zipformer_fast.ops.downsample import simple_downsample
from zipformer_fast.ops.swoosh import swoosh_l
from test_ops_helpers import assert_close
from zipformer_fast import use_backend

pytest.importorskip("triton")


def _block(x, ls, b, c, w, wb, ds_bias, mask):
    y = bias_norm(x, ls, b)
    y = bypass(x, y, c)
    y = swoosh_l(y, compact_derivative=False)
    y = activation_dropout_linear(y, w, wb, "SwooshR", mask)
    down = simple_downsample(y, ds_bias)
    return upsample_bypass(y, down * 2.0, 2, c)


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


def test_compiled_graph_holds_the_custom_ops_and_eager_does_not():
    """Traced, each fused launch is one opaque zipformer_fast:: node (no kernel internals, no
    graph break); in eager mode the same call runs the launcher directly (ops/_registry.FusedOp),
    so no custom op is dispatched at all."""
    torch.manual_seed(0)
    T, B, D = 7, 2, 20
    args = [torch.randn(T, B, D), torch.tensor(0.5), torch.randn(D), torch.rand(D), torch.randn(D, D) / 5,
            torch.randn(D), torch.randn(2)]
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with use_backend("triton"), torch.no_grad():
        torch.compile(_block, fullgraph=True, backend=record)(*args, None)
        targets = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
        fused = {t for t in targets if t.startswith("zipformer_fast.")}
        assert {"zipformer_fast.bias_norm_fwd.default", "zipformer_fast.bypass_fwd.default",
                "zipformer_fast.swoosh_fwd.default", "zipformer_fast.act_linear_fwd.default",
                "zipformer_fast.downsample_fwd.default"} <= fused, targets

        from torch._library.custom_ops import CustomOpDef
        from triton.runtime.interpreter import InterpretedFunction
        custom_calls, launches = [], []
        call, run = CustomOpDef.__call__, InterpretedFunction.run

        def spy_call(self, *a, **k):
            custom_calls.append(self._qualname)
            return call(self, *a, **k)

        def spy_run(self, *a, **k):
            launches.append(self.fn.__name__)
            return run(self, *a, **k)

        CustomOpDef.__call__, InterpretedFunction.run = spy_call, spy_run
        try:
            _block(*args, None)
        finally:
            CustomOpDef.__call__, InterpretedFunction.run = call, run
        assert custom_calls == []  # eager: the launchers ran without the custom-op dispatcher
        assert len(launches) >= 6, launches  # ... and they did launch the kernels


def test_layer_end_traces_as_one_custom_op_with_dynamic_shapes():
    """bias_norm_bypass (per-sequence scale, as in training) under torch.compile(dynamic=True):
    one opaque node each way, two lengths without recompiling, eager's output and gradients."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from zipformer_fast.ops.bias_norm_bypass import bias_norm_bypass

    torch.manual_seed(0)
    B, D = 2, 20
    params = [torch.tensor(0.4).requires_grad_(), torch.randn(D).requires_grad_(), torch.rand(B, D).requires_grad_()]
    counter = CompileCounterWithBackend("aot_eager")
    torch._dynamo.reset()
    with use_backend("triton"):
        compiled = torch.compile(bias_norm_bypass, fullgraph=True, dynamic=True, backend=counter)
        for T in (9, 14):
            xo, x = torch.randn(T, B, D, requires_grad=True), torch.randn(T, B, D, requires_grad=True)
            out = compiled(xo, x, *params)
            got = torch.autograd.grad(out.sum(), [xo, x, *params])
            eager = bias_norm_bypass(xo, x, *params)
            want = torch.autograd.grad(eager.sum(), [xo, x, *params])
            assert_close(out, eager, torch.float32, f"T={T} output")
            for i, (a, e) in enumerate(zip(got, want)):
                assert_close(a, e, torch.float32, f"T={T} grad {i}")
    assert counter.frame_count == 1
    targets = {str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert "zipformer_fast.bias_norm_bypass_fwd.default" in targets, targets
