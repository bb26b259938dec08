"""The fused backend's Balancer and Whiten backward against icefall's formulas (the reference
backend's autograd of the constraint loss and of the whitening metric), in the interpreter.

Balancer (kernels/balancer.py): channel-last (T, B, C), channel-in-the-middle (B, D, T) and
(B, C, T, F) layouts, batch 1, odd sizes, limits that bind on the mean, on the RMS, on both or on
neither, fp32 and fp16 gradients; three launches per call. Whiten (ops/whitening.py): the metric
and its gradient in closed form for 1, 2 and 4 groups, and a Whiten module's backward on the two
backends: the same edited gradient, the same probability switch.
"""
import random

import pytest
import torch

from test_ops_helpers import assert_close
from zipformer_fast import configure

pytest.importorskip("triton")
from zipformer_fast.ops.balancer import BalancerConfig, balancer_gradient, balancer_gradient_reference  # noqa: E402
from zipformer_fast.ops.whitening import whitening_metric_and_grad  # noqa: E402

LAYOUTS = [((9, 3, 20), 2), ((1, 1, 7), 2), ((3, 20, 9), 1), ((2, 5, 11, 4), 1), ((70, 2, 33), 2)]
LIMITS = {
    "mean_binds": (-0.05, 0.05, 0.01, 100.0),
    "rms_binds": (-5.0, 5.0, 2.0, 3.0),
    "both": (0.3, 0.9, 2.0, 3.0),
    "neither": (-5.0, 5.0, 0.01, 100.0),
    "rms_range_empty": (-9.65, 9.65, 1.88, 1.25),  # icefall's min_abs 1.5 > max_abs 1.0: clamp gives max
}


def _launches(fn):
    from bench.launch_counter import counting

    with counting() as c:
        out = fn()
    return out, sum(c["triton"].values()), sum(c["aten"].values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("limits", list(LIMITS))
@pytest.mark.parametrize("shape,channel_dim", LAYOUTS)
def test_balancer_gradient_matches_the_constraint_loss_autograd(shape, channel_dim, limits, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g) * 1.3 + 0.2).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    config = BalancerConfig(*LIMITS[limits], 0.04, channel_dim)
    with configure(backend="triton"):
        got = balancer_gradient(x, grad, config)
    want = balancer_gradient_reference(x, grad, config)
    assert got.dtype == grad.dtype and got.shape == grad.shape
    # compare the edits (the incoming gradient itself passes unchanged in both)
    assert_close(got.float() - grad.float(), want.float() - grad.float(), dtype, "balancer edit")
    if limits == "neither" and x.numel() > x.shape[channel_dim]:  # (one value per channel has std 0)
        assert torch.equal(got, grad)


def _balancer_edit_fp64(x, grad, config):
    """icefall's formulas (the reference's) evaluated in fp64 with autograd."""
    from zipformer_fast.ops.balancer import _constraint_loss

    dims = [d for d in range(x.dim()) if d != config.channel_dim]
    xd = x.double().requires_grad_()
    (lg,) = torch.autograd.grad(_constraint_loss(xd, dims, *config[:4]), xd)
    lg = lg * (config.grad_scale / (lg ** 2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1e-20))
    return grad.double().abs() * lg


def test_balancer_gradient_on_nearly_constant_channels():
    """|mean| >> std (a channel dominated by its bias): icefall's uncentred variance
    (mean(x^2) - mean^2) keeps no digits in fp32, so the reference's edit there is round-off (it
    may even take the zero-variance branch); the fused edit, from shifted sums, agrees with the
    formulas evaluated in fp64."""
    g = torch.Generator().manual_seed(1)
    x = -0.3 + 1e-4 * torch.randn(2, 40, 81, generator=g)
    grad = torch.randn(81, 2, 40, generator=g).permute(1, 2, 0)
    config = BalancerConfig(-9.65, 9.65, 0.0, 12.5, 0.04, 1)
    with configure(backend="triton"):
        got = balancer_gradient(x, grad, config)
    want = _balancer_edit_fp64(x, grad, config)
    assert want.abs().max() > 1e-3  # the mean limit binds
    # fp32 keeps about eps * |mean| / std of the centred values' relative precision
    bound = 1.2e-7 * (0.3 / 1e-4) * want.abs().max().item()
    assert (got.double() - grad.double() - want).abs().max().item() <= bound


def test_balancer_gradient_is_three_launches():
    x, grad = torch.randn(9, 3, 20), torch.randn(9, 3, 20)
    config = BalancerConfig(*LIMITS["both"], 0.04, 2)
    with configure(backend="triton"):
        _, triton_launches, aten_ops = _launches(lambda: balancer_gradient(x, grad, config))
    assert (triton_launches, aten_ops) == (3, 0)
    _, _, reference_ops = _launches(lambda: balancer_gradient_reference(x, grad, config))
    assert reference_ops > 30


def test_balancer_with_tensor_limits_or_a_fire_flag_takes_the_traceable_formulas():
    x, grad = torch.randn(9, 3, 20), torch.randn(9, 3, 20)
    config = BalancerConfig(torch.tensor(0.3), 0.9, 2.0, 3.0, 0.04, 2, torch.tensor(True))
    with configure(backend="triton"):
        _, triton_launches, _ = _launches(lambda: balancer_gradient(x, grad, config))
    assert triton_launches == 0


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_whitening_metric_and_gradient_in_closed_form(groups):
    from zipformer_fast.nn.grad_shapers import whitening_metric

    g = torch.Generator().manual_seed(groups)
    x = torch.randn(40, 2, 16, generator=g) @ torch.randn(16, 16, generator=g)
    xr = x.clone().requires_grad_()
    metric = whitening_metric(xr, groups)
    (want,) = torch.autograd.grad(metric, xr)
    got_metric, got = whitening_metric_and_grad(x, groups, limit=0.0)
    assert got_metric == pytest.approx(metric.item(), rel=1e-5)
    assert_close(got, want, torch.float32, "metric gradient")
    below, none = whitening_metric_and_grad(x, groups, limit=metric.item() * 2)
    assert none is None and below == pytest.approx(metric.item(), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_whiten_backward_is_the_same_on_both_backends(dtype):
    from zipformer_fast.nn.grad_shapers import Whiten

    g = torch.Generator().manual_seed(0)
    x = (torch.randn(30, 2, 16, generator=g) @ torch.randn(16, 16, generator=g)).to(dtype)
    dy = torch.randn(30, 2, 16, generator=g).to(dtype)
    results = {}
    for backend in ("reference", "triton"):
        w = Whiten(num_groups=1, whitening_limit=1.5, prob=(0.025, 0.25), grad_scale=0.1)
        w.forced = True
        xr = x.clone().requires_grad_()
        random.seed(3)
        with configure(backend=backend):
            (dx,) = torch.autograd.grad(w(xr), xr, dy)
        results[backend] = (dx, w.prob, random.random())
    (dx_r, prob_r, next_r), (dx_t, prob_t, next_t) = results["reference"], results["triton"]
    assert not torch.equal(dx_r, dy)  # the limit binds: the gradient was edited
    assert_close(dx_t.float() - dy.float(), dx_r.float() - dy.float(), dtype, "whiten edit")
    assert prob_t == prob_r == 0.25 and next_t == next_r


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(), (7,), (3, 130)])
def test_limit_param_value_backward_is_one_launch_with_icefalls_sign_flips(shape, dtype):
    from zipformer_fast.nn.grad_shapers import _LimitParamValue

    g = torch.Generator().manual_seed(0)
    x = (torch.rand(shape, generator=g) * 4 - 2).to(dtype)   # inside and outside [-1, 1]
    dy = torch.randn(shape, generator=g).to(dtype)
    results = {}
    for backend in ("reference", "triton"):
        xr = x.clone().requires_grad_()
        with configure(backend=backend):
            (dx,), launches, _ = _launches(lambda: torch.autograd.grad(_LimitParamValue.apply(xr, -1.0, 1.0), xr, dy))
        results[backend] = dx, launches
    assert results["triton"][1] == 1
    assert torch.equal(results["triton"][0], results["reference"][0])
    flipped = ((dy > 0) & (x < -1)) | ((dy < 0) & (x > 1))
    assert torch.equal(results["reference"][0], torch.where(flipped, -dy, dy))
