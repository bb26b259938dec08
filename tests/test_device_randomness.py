"""Device-side randomness (what torch.compile traces; zipformer_fast.nn.randomness): the same
schedules, rates and gradient edits as icefall's Python-random path, drawn with torch.rand.

Rates use the 5-sigma binomial bound of tests/test_training_mode.py. Edits are compared with the
eager path forced to act (Balancer/Whiten `forced = True`).
"""
import math

import pytest
import torch

from zipformer_fast.nn import Balancer, BypassModule, ScheduledFloat, Whiten, limit_param_value
from zipformer_fast.nn.randomness import device_side, use_device_side_randomness
from zipformer_fast.nn.scheduled_float import set_batch_count, value


def binomial_ok(k, n, p, sigmas=5.0):
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


def test_mode_switch():
    assert not device_side()
    with use_device_side_randomness():
        assert device_side()
        with use_device_side_randomness(False):
            assert not device_side()
    assert not device_side()


def test_schedule_tensor_equals_float_schedule():
    holder = torch.nn.Sequential(torch.nn.Linear(1, 1))
    holder.sf = ScheduledFloat((0.0, 0.5), (4000.0, 0.02), (16000.0, 0.0), default=0.25)
    with use_device_side_randomness():
        assert value(holder.sf) == 0.25  # no batch count yet: the Python default
        for bc in (0.0, 1000.0, 4000.0, 9000.0, 16000.0, 1e6):
            set_batch_count(holder, bc)
            got = value(holder.sf)
            assert isinstance(got, torch.Tensor) and got.dim() == 0
            assert got.item() == pytest.approx(float(holder.sf), rel=1e-6)
        holder.eval()
        assert value(holder.sf) == 0.25
    shared = {id(m.batch_count_tensor) for m in holder.modules() if isinstance(m, ScheduledFloat)}
    assert len(shared) == 1


def test_layer_skip_rate_on_device():
    byp = BypassModule(4, skip_rate=ScheduledFloat((0.0, 0.5), (4000.0, 0.035)))
    byp.train()
    torch.manual_seed(0)
    n = 20000
    for bc, rate in ((0.0, 0.5), (1e5, 0.035)):
        set_batch_count(byp, bc)
        with use_device_side_randomness():
            scale = byp.get_scale(n)
        assert binomial_ok(int((scale.abs().sum(dim=1) == 0).sum()), n, rate)


def test_balancer_fires_at_its_probability_and_edits_like_eager():
    torch.manual_seed(1)
    x = torch.randn(200, 8) * 10 + 5  # violates max_abs and max_positive: every active call edits
    g = torch.randn(200, 8)
    bal = Balancer(8, channel_dim=-1, max_abs=1.0, prob=0.3)
    n, fired = 300, 0
    with use_device_side_randomness():
        for _ in range(n):
            xr = x.clone().requires_grad_(True)
            bal(xr).backward(g)
            fired += int(not torch.equal(xr.grad, g))
    assert binomial_ok(fired, n, 0.3), fired / n
    grads = []
    bal.forced = True
    for on_device in (True, False):
        xr = x.clone().requires_grad_(True)
        with use_device_side_randomness(on_device):
            bal(xr).backward(g)
        grads.append(xr.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-7)


@pytest.fixture
def reference_backend():
    """Eager Whiten then differentiates its metric with autograd, as the device-side path does (the
    fused backend's closed form is checked in tests/test_grad_shapers_fused.py)."""
    from zipformer_fast import configure

    with configure(backend="reference"):
        yield


@pytest.mark.usefixtures("reference_backend")
def test_whiten_switches_its_probability_in_backward_like_eager():
    torch.manual_seed(2)
    x = torch.randn(400, 1) @ torch.ones(1, 16) + 0.01 * torch.randn(400, 16)  # not white
    g = torch.randn(400, 16)
    grads = []
    for on_device in (True, False):
        w = Whiten(num_groups=1, whitening_limit=2.0, prob=(0.025, 0.25), grad_scale=0.1)
        w.forced = True
        w.prob_tensor.fill_(0.025)
        xr = x.clone().requires_grad_(True)
        with use_device_side_randomness(on_device):
            w(xr).backward(g)
        grads.append(xr.grad)
        if on_device:
            assert w.prob_tensor.item() == pytest.approx(0.25)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-6, atol=1e-6)
    white = torch.randn(400, 16).requires_grad_(True)
    with use_device_side_randomness():
        w(white).backward(g)
    assert torch.equal(white.grad, g) and w.prob_tensor.item() == pytest.approx(0.025)


def test_limit_param_value_flips_at_its_probability():
    torch.manual_seed(3)
    p = torch.full((4,), 0.5, requires_grad=True)  # below min 0.9: a +1 gradient gets flipped
    n, flipped = 400, 0
    with use_device_side_randomness():
        for _ in range(n):
            p.grad = None
            limit_param_value(p, min=torch.tensor(0.9), max=1.0).sum().backward()
            flipped += int(p.grad[0] < 0)
    assert binomial_ok(flipped, n, 0.6), flipped / n
