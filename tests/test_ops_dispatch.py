"""How a fused-op call chooses its path (ops/_registry.route) and what the eager backward of a
fused op promises (ops/_registry.backward_once).

route: the PyTorch reference when the backend says so; the registered custom op while a
TorchDispatchMode is active or on meta tensors; the op's autograd.Function when autograd records
the call; the launcher itself otherwise. backward_once: the same gradients as without it, a
second differentiation (create_graph=True, then grad of the grad) raises as torch's
once_differentiable does, and the engine's ordinary backward does not enter torch.no_grad() (the
host time once_differentiable adds to every backward node). Inside a torch.func transform (grad,
vmap) every fused op takes its reference and gives the reference backend's values.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from zipformer_fast import use_backend
from zipformer_fast.ops._registry import CUSTOM_OP, FUNCTION, LAUNCH, REFERENCE, backward_once, route

pytest.importorskip("triton")
from zipformer_fast.ops.bypass import bypass, bypass_reference, upsample_bypass  # noqa: E402
from zipformer_fast.ops.activation_linear import activation_dropout_linear  # noqa: E402
from zipformer_fast.ops.bias_norm import bias_norm  # noqa: E402
from zipformer_fast.ops.bias_norm_bypass import bias_norm_bypass  # noqa: E402
from zipformer_fast.ops.downsample import simple_downsample  # noqa: E402
from zipformer_fast.ops.swoosh import swoosh_l, swoosh_r  # noqa: E402


class _Passthrough(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_route_follows_the_backend_then_tracing_then_autograd():
    x = torch.randn(3, 2, 4, requires_grad=True)
    frozen = torch.randn(3, 2, 4)
    with use_backend("reference"):
        assert route(x, frozen) == REFERENCE
    with use_backend("triton"):
        assert route(x, frozen) == FUNCTION
        assert route(frozen, None, x) == FUNCTION  # any input that requires grad; None entries skipped
        assert route(frozen, None) == LAUNCH
        with torch.no_grad():
            assert route(x, frozen) == LAUNCH
        with _Passthrough():
            assert route(x, frozen) == CUSTOM_OP
        assert route(torch.empty(3, 2, 4, device="meta"), None) == CUSTOM_OP


def test_backward_once_gives_the_gradients_and_refuses_a_second_differentiation():
    torch.manual_seed(0)
    xo, x = torch.randn(5, 2, 7, requires_grad=True), torch.randn(5, 2, 7, requires_grad=True)
    c = torch.rand(7, requires_grad=True)
    dy = torch.randn(5, 2, 7)
    expected = torch.autograd.grad(bypass_reference(xo, x, c), (xo, x, c), dy)
    with use_backend("triton"):
        y = bypass(xo, x, c)
        assert type(y.grad_fn).__name__ == "_BypassFusedBackward"
        plain = torch.autograd.grad(y, (xo, x, c), dy)
        # a second differentiation needs a graph through the incoming gradient too
        dy_tracked = dy.clone().requires_grad_()
        with_graph = torch.autograd.grad(bypass(xo, x, c), (xo, x, c), dy_tracked, create_graph=True)
    for a, b, e in zip(plain, with_graph, expected):
        torch.testing.assert_close(a, e)
        torch.testing.assert_close(b, e)
    assert with_graph[0].requires_grad  # once_differentiable's stand-in node
    with pytest.raises(RuntimeError, match="differentiate twice"):
        with_graph[0].sum().backward()


def test_backward_once_keeps_the_function_name():
    def backward(ctx, grad):
        return grad

    assert backward_once(backward).__name__ == "backward"


def test_the_engine_runs_a_fused_backward_without_entering_no_grad(monkeypatch):
    entered = []
    original = torch.no_grad.__enter__

    def counting_enter(self):
        entered.append(1)
        return original(self)

    xo, x = torch.randn(4, 2, 3, requires_grad=True), torch.randn(4, 2, 3, requires_grad=True)
    c = torch.rand(3, requires_grad=True)
    with use_backend("triton"):
        y = bypass(xo, x, c)
        monkeypatch.setattr(torch.no_grad, "__enter__", counting_enter)
        torch.autograd.grad(y, (xo, x, c), torch.ones_like(y))
    assert entered == []


_T, _B, _C = 5, 2, 6
# op of x (T, B, C) with its other inputs fixed: every fused op with an eager autograd.Function
_OPS_OF_X = {
    "swoosh_l": lambda x: swoosh_l(x),
    "swoosh_r_compact": lambda x: swoosh_r(x, compact_derivative=True),
    "bias_norm": lambda x: bias_norm(x, torch.tensor(0.1), torch.linspace(-1, 1, _C)),
    "bypass": lambda x: bypass(x, x * x, torch.linspace(0.2, 0.9, _C)),
    "upsample_bypass": lambda x: upsample_bypass(x, x[::2] * 2.0, 2, torch.linspace(0.2, 0.9, _C)),
    "bias_norm_bypass": lambda x: bias_norm_bypass(x, x * x, torch.tensor(0.1), torch.linspace(-1, 1, _C),
                                                   torch.linspace(0.2, 0.9, _C)),
    "simple_downsample": lambda x: simple_downsample(x, torch.tensor([0.3, -0.2])),
    "activation_dropout_linear": lambda x: activation_dropout_linear(
        x, torch.linspace(-1, 1, _C * 4).reshape(4, _C), torch.zeros(4), "SwooshL",
        (torch.arange(_B * _C).reshape(1, _B, _C) % 3 != 0).float() * 1.5),
}


@pytest.mark.parametrize("name", list(_OPS_OF_X))
def test_torch_func_grad_and_vmap_see_the_reference(name):
    """grad and vmap through a fused op on the triton backend: the reference backend's values,
    which equal plain autograd and a loop (SwooshR's uint8 derivative is an autograd.Function
    functorch cannot run: inside a transform it is the exact derivative)."""
    op = _OPS_OF_X[name]
    plain = swoosh_r if name == "swoosh_r_compact" else op
    x = torch.randn(_T, _B, _C, generator=torch.Generator().manual_seed(0))
    xs = torch.randn(3, _T, _B, _C, generator=torch.Generator().manual_seed(1))
    w = torch.randn(op(x).shape, generator=torch.Generator().manual_seed(2))
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            grad = torch.func.grad(lambda t: (op(t) * w).sum())(x)
            batched = torch.func.vmap(op)(xs)
        results[backend] = grad, batched
    torch.testing.assert_close(results["triton"], results["reference"], rtol=0, atol=0)
    with use_backend("reference"):
        xr = x.clone().requires_grad_()
        (want_grad,) = torch.autograd.grad((plain(xr) * w).sum(), [xr])
        want_batched = torch.stack([op(xi) for xi in xs])
    torch.testing.assert_close(results["triton"][0], want_grad)
    torch.testing.assert_close(results["triton"][1], want_batched)
