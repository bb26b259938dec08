"""The fused ops on a real GPU (compiled Triton, not the interpreter): fp32, fp16 and bf16
(bf16 cannot be checked in the interpreter), odd sizes, and autocast. Skipped without CUDA.

Each op's output, input gradients and parameter gradients are compared with the reference
evaluated in fp32 on the same rounded inputs, with the per-dtype tolerances of test_ops_helpers;
fp32 GEMMs run in IEEE fp32 (torch's default allow_tf32=False is mirrored by the kernels).
"""
import importlib

import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls
from zipformer_fast import use_backend

pytestmark = pytest.mark.gpu
DT = [torch.float32, torch.float16, torch.bfloat16]


def _ops(name):
    return importlib.import_module(f"zipformer_fast.ops.{name}")


def _r(shape, dtype, scale=1.0, grad=True):
    return (torch.randn(shape, device="cuda") * scale).to(dtype).requires_grad_(grad)


def _compare(fused, ref, inputs, dtype, module):
    with use_backend("triton"), kernel_calls(module, ("forward", "backward") if module != "bypass_up" else ()) as calls:
        out = fused(*inputs)
        g = torch.randn(out.shape, device="cuda").to(out.dtype)
        got = grads(out, inputs, g)
    plain = [t.detach().float().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]
    want_out = ref(*plain)
    want = grads(want_out, plain, g.float())
    assert_close(out, want_out, dtype, "output")
    for i, (a, e) in enumerate(zip(got, want)):
        if e is not None:
            assert_close(a, e, dtype, f"grad {i}")
    assert all(v == 1 for v in calls.values()), calls


@pytest.mark.parametrize("dtype", DT)
def test_swoosh(dtype):
    S = _ops("swoosh")
    _compare(S.swoosh_l, S.swoosh_l_reference, [_r((301, 7, 129), dtype, 4.0)], dtype, "swoosh")
    _compare(S.swoosh_r, S.swoosh_r_reference, [_r((1, 1, 3), dtype, 4.0)], dtype, "swoosh")


@pytest.mark.parametrize("dtype", DT)
def test_swoosh_compact(dtype):
    S = _ops("swoosh")
    x = _r((257, 3, 65), dtype, 4.0)
    with use_backend("triton"):
        (dx,) = torch.autograd.grad(S.swoosh_l(x, compact_derivative=True), x, torch.ones_like(x))
    exact = torch.sigmoid(x.detach().float() - 4.0) - 0.08
    assert ((dx.float() - exact).abs() <= 1.05 / 255 + 2 * torch.finfo(dtype).eps).all()


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("shape", [(301, 7, 192), (5, 1, 37), (63, 30, 513)])
def test_bias_norm(dtype, shape):
    BN = _ops("bias_norm")
    ins = [_r(shape, dtype), torch.tensor(0.3, device="cuda", requires_grad=True),
           (torch.randn(shape[-1], device="cuda") * 0.3).requires_grad_()]
    _compare(BN.bias_norm, BN.bias_norm_reference, ins, dtype, "bias_norm")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("per_batch", [False, True])
def test_bypass_and_upsample_bypass(dtype, per_batch):
    BP = _ops("bypass")
    T, B, D = 301, 7, 193
    c = torch.rand((B, D) if per_batch else (D,), device="cuda").requires_grad_()
    _compare(BP.bypass, BP.bypass_reference, [_r((T, B, D), dtype), _r((T, B, D), dtype), c], dtype, "bypass")
    for ds in (2, 4, 8):
        _compare(lambda a, b, s: BP.upsample_bypass(a, b, ds, s), lambda a, b, s: BP.upsample_bypass_reference(a, b, ds, s),
                 [_r((T, B, D), dtype), _r(((T + ds - 1) // ds, B, D), dtype), c], dtype, "bypass_up")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("ds", [1, 2, 4, 8])
def test_downsample(dtype, ds):
    DS = _ops("downsample")
    x = _r((301, 7, 200), dtype)[..., :193]  # truncation view
    _compare(DS.simple_downsample, DS.simple_downsample_reference, [x, torch.randn(ds, device="cuda").requires_grad_()],
             dtype, "downsample")


@pytest.mark.parametrize("dtype", DT)
@pytest.mark.parametrize("act", ["SwooshL", "SwooshR"])
def test_activation_dropout_linear(dtype, act):
    AL = _ops("activation_linear")
    T, B, K, N = 97, 5, 389, 203
    mask = ((torch.rand(1, B, K, device="cuda") > 0.2).to(dtype) / 0.8).to(dtype)
    ins = [_r((T, B, K), dtype, 2.0), _r((N, K), dtype, K ** -0.5), _r((N,), dtype, 0.1)]
    _compare(lambda x, w, b: AL.activation_dropout_linear(x, w, b, act, mask),
             lambda x, w, b: AL.activation_dropout_linear_reference(x, w, b, act, mask.float()), ins, dtype,
             "activation_linear")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast(dtype):
    AL, BN = _ops("activation_linear"), _ops("bias_norm")
    x = _r((50, 3, 96), torch.float32, 2.0)
    w, b = _r((64, 96), torch.float32, 0.1), _r((64,), torch.float32, 0.1)
    ls, bias = torch.tensor(0.2, device="cuda", requires_grad=True), _r((64,), torch.float32, 0.1)
    res = {}
    for backend in ("triton", "reference"):
        with use_backend(backend), torch.autocast("cuda", dtype=dtype):
            y = AL.activation_dropout_linear(x, w, b, "SwooshL", None)
            y = BN.bias_norm(y, ls, bias)
        res[backend] = (y, *torch.autograd.grad(y.float().sum(), (x, w, b, ls, bias)))
    assert res["triton"][0].dtype == res["reference"][0].dtype == dtype
    for i, (a, e) in enumerate(zip(res["triton"], res["reference"])):
        assert_close(a.float(), e.float(), dtype, f"autocast tensor {i}")


@pytest.mark.parametrize("dtype", DT)
def test_linear_swoosh_inference(dtype):
    AL = _ops("activation_linear")
    x, w, b = _r((97, 5, 193), dtype, grad=False), _r((517, 193), dtype, 193 ** -0.5, grad=False), _r((517,), dtype, 0.1, grad=False)
    with torch.no_grad(), use_backend("triton"):
        y = AL.linear_swoosh(x, w, b, "SwooshL")
    assert_close(y, AL.linear_swoosh_reference(x.float(), w.float(), b.float(), "SwooshL"), dtype, "output")
