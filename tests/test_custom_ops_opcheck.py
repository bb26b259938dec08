"""Every zipformer_fast:: custom op passes torch.library.opcheck: its schema (no undeclared
mutation or aliasing), its autograd registration, its fake impl against the real kernel (shapes,
dtypes, significant strides) and an AOTAutograd trace with dynamic shapes (outputs and gradients
equal eager). These registrations are what torch.compile sees of the fused ops
(ops/_registry.py), so a fake impl that disagrees with its kernel would compile a wrong graph.

The calls checked are the ones the public ops make: each scenario runs a public op forward and
backward under a dispatch mode that records every zipformer_fast:: call with its arguments
(odd sizes, batch 1 with a non-unit stride on its size-1 dim, per-sequence scales, masks present
and absent), and
opcheck replays them. A coverage test fails when a registered op has no scenario.

The uint8 derivative code of compact SwooshR is stochastic rounding (a new seed per call), so
for that call the eager-vs-AOT comparison is left out; its schema, autograd and fake-tensor
checks still run, and its values are tested in tests/test_ops_swoosh.py.
"""
import importlib
import pkgutil

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

pytest.importorskip("triton")

import zipformer_fast.nn  # noqa: E402
import zipformer_fast.ops  # noqa: E402
from zipformer_fast import configure  # noqa: E402
from zipformer_fast.ops import activation_linear as AL  # noqa: E402
from zipformer_fast.ops import attention as A  # noqa: E402
from zipformer_fast.ops.balancer import BalancerConfig, balancer_gradient  # noqa: E402
from zipformer_fast.ops.bias_norm import bias_norm  # noqa: E402
from zipformer_fast.ops.bias_norm_bypass import bias_norm_bypass  # noqa: E402
from zipformer_fast.ops.bypass import bypass, upsample_bypass  # noqa: E402
from zipformer_fast.ops.downsample import simple_downsample  # noqa: E402
from zipformer_fast.ops.gated_conv import gated_depthwise_conv1d  # noqa: E402
from zipformer_fast.ops.residual_linear import residual_linear  # noqa: E402
from zipformer_fast.ops.swoosh import swoosh_l, swoosh_r  # noqa: E402
from zipformer_fast.ops.traced_conv import convolution_backward  # noqa: E402
from zipformer_fast.nn.grad_shapers import limit_param_gradient  # noqa: E402

NAMESPACE = "zipformer_fast"


class RecordCustomOps(TorchDispatchMode):
    """Records each zipformer_fast:: call (op overload, args, kwargs, grad mode) and runs it."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == NAMESPACE:
            self.calls.append((func, args, kwargs, torch.is_grad_enabled()))
        return func(*args, **kwargs)


def _r(*shape, grad=True, scale=1.0):
    """A (T, 1, C) tensor is made batch-first and transposed, as an encoder input of one
    utterance often is: contiguous, with a batch stride of T*C on its size-1 dim."""
    if len(shape) == 3 and shape[1] == 1:
        x = torch.randn(1, shape[0], shape[2]).transpose(0, 1)
    else:
        x = torch.randn(*shape)
    return (x * scale).requires_grad_(grad)


def _fwd_bwd(fn, *inputs):
    y = fn(*inputs)
    y = y[0] if isinstance(y, tuple) else y
    y.backward(torch.randn_like(y))


def _swoosh(B):
    x = _r(7, B, 13)
    _fwd_bwd(swoosh_l, x)
    _fwd_bwd(lambda t: swoosh_r(t, compact_derivative=True), x)


def _bias_norm(B):
    _fwd_bwd(bias_norm, _r(5, B, 11), torch.tensor(0.2).requires_grad_(), _r(11))


def _bypass(B):
    T, C = 7, 10
    for scale in (torch.rand(C).requires_grad_(), torch.rand(B, C).requires_grad_()):
        _fwd_bwd(bypass, _r(T, B, C), _r(T, B, C), scale)
        _fwd_bwd(lambda xo, y, c: upsample_bypass(xo, y, 2, c), _r(T, B, C), _r(4, B, C), scale)


def _bias_norm_bypass(B):
    T, C = 6, 9
    for scale in (torch.rand(C).requires_grad_(), torch.rand(B, C).requires_grad_()):
        _fwd_bwd(bias_norm_bypass, _r(T, B, C), _r(T, B, C), torch.tensor(-0.1).requires_grad_(), _r(C), scale)


def _downsample(B):
    _fwd_bwd(simple_downsample, _r(7, B, 6), _r(2))


def _activation_linear(B):
    T, K, N = 5, 12, 7
    mask = (torch.rand(1, B, K) > 0.3).float() / 0.7
    for m in (mask, None):
        _fwd_bwd(lambda x, w, b: AL.activation_dropout_linear(x, w, b, "SwooshR", m), _r(T, B, K), _r(N, K), _r(N))
    with torch.no_grad():
        AL.linear_swoosh(_r(T, B, K), _r(N, K), _r(N), "SwooshL")


def _inference_epilogues(B):
    T, K, N = 5, 12, 8
    with torch.no_grad():
        residual_linear(_r(T, B, N), _r(T, B, K), _r(N, K), _r(N), "SwooshR")
        residual_linear(_r(T, B, N), _r(T, B, K), _r(N, K), None, None, _r(T, B, K))
        pad = torch.zeros(B, T, dtype=torch.bool)
        pad[0, -2:] = True
        gated_depthwise_conv1d(_r(T, B, N), _r(2 * N, N), _r(2 * N), pad, _r(N, 1, 3), _r(N))


def _grad_shapers(B):
    x, g = _r(6, B, 10, grad=False), _r(6, B, 10, grad=False)
    balancer_gradient(x, g, BalancerConfig(0.3, 0.9, 2.0, 3.0, 0.04, 2))
    limit_param_gradient(_r(B, 10, grad=False), _r(B, 10, grad=False), -0.5, 0.5)


def _attention(B):
    T, H, dq, dp, dv = 6, 2, 8, 4, 5
    q, k, p = _r(T, B, H, dq), _r(T, B, H, dq), _r(T, B, H, dp)
    pos = _r(2 * T - 1, H, dp)
    kpm = torch.zeros(B, T, dtype=torch.bool)
    kpm[0, -1] = True
    for mode in ("recompute", "materialize"):
        with configure(attention_mode=mode):
            w = A.attention_weights(q, k, p, pos, kpm, None)
            out = A.attention_apply(w, _r(H, B, T, dv))
            out.backward(torch.randn_like(out))


def _traced_conv(B):
    """The gradient node of ops.traced_conv (what compiled training graphs call for a conv): the
    encoder's depthwise conv1d with its bias, and a strided 2-D conv without one or an input gradient."""
    x, w = _r(B, 6, 11, grad=False), _r(6, 1, 5, grad=False)
    convolution_backward(_r(B, 6, 11, grad=False), x, w, True, [1], [2], 6, True, True, True)
    x2, w2 = _r(B, 3, 9, 8, grad=False), _r(4, 3, 3, 3, grad=False)
    convolution_backward(_r(B, 4, 7, 3, grad=False), x2, w2, False, [1, 2], [0, 0], 1, False, True, False)


SCENARIOS = {"swoosh": _swoosh, "bias_norm": _bias_norm, "bypass": _bypass, "bias_norm_bypass": _bias_norm_bypass,
             "downsample": _downsample, "activation_linear": _activation_linear,
             "inference_epilogues": _inference_epilogues, "grad_shapers": _grad_shapers, "attention": _attention,
             "traced_conv": _traced_conv}


def _record(name, B):
    torch.manual_seed(0)
    mode = RecordCustomOps()
    with configure(backend="triton"), mode:
        SCENARIOS[name](B)
    return mode.calls


def _registered_ops():
    """Every op in the namespace once all of the package's op-defining modules are imported."""
    for package in (zipformer_fast.ops, zipformer_fast.nn):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
    ns = getattr(torch.ops, NAMESPACE)
    return sorted(n for n in dir(ns) if isinstance(getattr(ns, n, None), torch._ops.OpOverloadPacket))


def _is_stochastic(func, args):
    return func.name() == f"{NAMESPACE}::swoosh_fwd" and bool(args[3])


def _detached(args):
    """Arguments of a call made with grad mode off (inference-only ops, and the backward ops, which
    the autograd engine runs with grad mode off): no graph reaches them."""
    return tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)


@pytest.mark.parametrize("B", [2, 1])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_recorded_call_passes_opcheck(name, B):
    calls = _record(name, B)
    assert calls, f"scenario {name} made no zipformer_fast:: call"
    for func, args, kwargs, grad_mode in calls:
        if not grad_mode:
            args = _detached(args)
        tests = ("test_schema", "test_autograd_registration", "test_faketensor")
        if not _is_stochastic(func, args):
            tests += ("test_aot_dispatch_dynamic",)
        torch.library.opcheck(func, args, kwargs, test_utils=tests)


def test_every_registered_op_has_a_scenario():
    seen = set()
    for name in SCENARIOS:
        seen |= {func.name().split("::")[1] for func, *_ in _record(name, 2)}
    missing = set(_registered_ops()) - seen
    assert not missing, f"custom ops without an opcheck scenario: {sorted(missing)}"
