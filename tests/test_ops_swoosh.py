"""Fused SwooshL / SwooshR (kernels/swoosh.py) against the reference formula, in the interpreter.

Exact mode: output and input gradient within the per-dtype tolerance of test_ops_helpers (fp32
reference on the same rounded inputs), over odd shapes, batch 1, zero (padding) frames, large
|x| (the softplus overflow branch) and a non-contiguous input. Compact mode (uint8 derivative):
each element of the input gradient is within |g| * 1.05/255 of the exact one (quantisation bound
1.005/255 plus rounding), the rounding is unbiased, and only one byte per element is saved.
"""

import pytest
import torch

from test_ops_helpers import assert_close, kernel_calls, saved_tensors
from zipformer_fast import use_backend

pytest.importorskip("triton")
from zipformer_fast.ops import swoosh as S

ACTS = {"L": (S.swoosh_l, S.swoosh_l_reference, S.SWOOSH_L_SHIFT), "R": (S.swoosh_r, S.swoosh_r_reference, S.SWOOSH_R_SHIFT)}
SHAPES = [(1,), (3, 1, 37), (17, 5, 33)]


def _input(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 6
    x.view(-1)[:2] = torch.tensor([60.0, -60.0])[: x.numel()]  # exp overflow branch / far tail
    if x.dim() == 3:
        x[-2:] = 0.0  # padding frames
    return x.to(dtype)


@pytest.mark.parametrize("act", ["L", "R"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_mode_matches_reference(act, dtype, shape):
    fused, ref, _ = ACTS[act]
    x = _input(shape, dtype).requires_grad_()
    g = torch.randn(shape).to(dtype)
    with use_backend("triton"), kernel_calls("swoosh") as calls:
        y = fused(x)
        (dx,) = torch.autograd.grad(y, x, g)
    assert calls == {"forward": 1, "backward": 1}
    assert y.dtype == dtype and dx.dtype == dtype
    xr = x.detach().float().requires_grad_()
    yr = ref(xr)
    (dxr,) = torch.autograd.grad(yr, xr, g.float())
    assert_close(y, yr, dtype, "output")
    assert_close(dx, dxr, dtype, "input grad")


def test_non_contiguous_input():
    x = _input((6, 10), torch.float32).t().requires_grad_()  # (10, 6), strides (1, 10)
    with use_backend("triton"):
        y = S.swoosh_r(x)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    xr = x.detach().clone().requires_grad_()
    yr = S.swoosh_r_reference(xr)
    (dxr,) = torch.autograd.grad(yr, xr, torch.ones_like(yr))
    assert_close(y, yr, torch.float32, "output")
    assert_close(dx, dxr, torch.float32, "input grad")


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("act", ["L", "R"])
def test_compact_derivative_is_within_quantisation_bound(backend, act):
    fused, ref, shift = ACTS[act]
    x = _input((9, 4, 21), torch.float32).requires_grad_()
    g = torch.randn(x.shape)
    with use_backend(backend):
        y = fused(x, compact_derivative=True)
        (dx,) = torch.autograd.grad(y, x, g)
    exact = g * (torch.sigmoid(x.detach() - shift) - 0.08)
    bound = g.abs() * (1.05 / 255) + 1e-6
    assert ((dx - exact).abs() <= bound).all(), ((dx - exact).abs() / g.abs()).max()
    assert_close(y, ref(x.detach()), torch.float32, "output")


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_compact_derivative_rounding_is_unbiased(backend):
    # 4096 copies of one value: floor-only rounding would be off by up to 1/255 ~ 4e-3 on average;
    # stochastic rounding's mean error has std <= 0.5 * 1.005/255 / 64 ~ 3e-5.
    x = torch.full((4096,), 0.3, requires_grad=True)
    torch.manual_seed(1)
    with use_backend(backend):
        (dx,) = torch.autograd.grad(S.swoosh_l(x, compact_derivative=True), x, torch.ones(4096))
    exact = torch.sigmoid(torch.tensor(0.3 - S.SWOOSH_L_SHIFT)) - 0.08
    assert abs(dx.mean().item() - exact.item()) < 2e-4
    assert dx.unique().numel() == 2  # really quantised: two neighbouring codes


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_compact_mode_saves_one_byte_per_element(backend):
    x = _input((7, 3, 11), torch.float32).requires_grad_()
    with use_backend(backend):
        _, saved = saved_tensors(lambda: S.swoosh_l(x * 1.0, compact_derivative=True))
        _, saved_exact = saved_tensors(lambda: S.swoosh_l(x * 1.0))
    assert [(t.dtype, t.numel()) for t in saved] == [(torch.uint8, x.numel())]
    assert sum(t.numel() * t.element_size() for t in saved_exact) >= x.numel() * 4
