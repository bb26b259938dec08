"""Balancer / Whiten push activations back inside their limits (icefall scaling.py semantics).

The Balancer adds |grad| * g_loss to the incoming gradient, where g_loss is d(constraint loss)/dx
normalised per channel to RMS grad_scale. Its effect is proportional to |grad|: with a zero incoming
gradient it does nothing, so these tests feed a zero-mean random gradient every step and apply only
the *extra* term (x.grad - g) as an SGD step. The random part averages out; what remains is the
Balancer's drift, which must carry each channel to the edge of its allowed region:
- max_abs: per-channel RMS ends at max_rms = sqrt(pi/2) * max_abs (it stops at the limit, not 0);
- min_abs: RMS rises to min_rms;
- max_positive: the fraction of positive values falls towards max_positive.
A sign error in the backward would move every statistic the other way (they would diverge).
Whiten's extra gradient must lower the whiteness metric towards its limit.
Each test runs a few hundred tiny backward passes (< 1 s on CPU).
"""
import math

import pytest
import torch

from zipformer_fast.nn.grad_shapers import Balancer, Whiten, whitening_metric

SQRT_HALF_PI = math.sqrt(math.pi / 2)


def _balancer_drift(x: torch.Tensor, lr: float, steps: int, **limits) -> torch.Tensor:
    bal = Balancer(x.shape[-1], channel_dim=-1, **limits)
    bal.forced = True  # act on every call (prob = 1)
    for _ in range(steps):
        xr = x.clone().requires_grad_(True)
        g = torch.randn_like(x)
        bal(xr).backward(g)
        x = x - lr * (xr.grad - g)
    return x


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(dim=0).sqrt()


def test_max_abs_brings_channel_rms_down_to_the_limit():
    torch.manual_seed(0)
    x = _balancer_drift(torch.randn(400, 4) * 10, lr=1.0, steps=300,
                        min_positive=0.0, max_positive=1.0, min_abs=0.0, max_abs=1.0)
    # Starts at RMS ~10; must end at the limit sqrt(pi/2) = 1.2533 (within 5 %), not beyond it.
    assert torch.allclose(_rms(x), torch.full((4,), SQRT_HALF_PI), rtol=0.05), _rms(x)


def test_min_abs_brings_channel_rms_up_to_the_limit():
    torch.manual_seed(1)
    x = _balancer_drift(torch.randn(400, 4) * 0.01, lr=0.05, steps=300,
                        min_positive=0.0, max_positive=1.0, min_abs=0.1, max_abs=100.0)
    # Starts at RMS ~0.01; the lower limit is 0.1 * sqrt(pi/2) = 0.1253.
    assert torch.allclose(_rms(x), torch.full((4,), 0.1 * SQRT_HALF_PI), rtol=0.1), _rms(x)


def test_max_positive_lowers_the_fraction_of_positive_values():
    torch.manual_seed(2)
    x0 = torch.randn(400, 4) + 3.0  # ~100 % positive
    x = _balancer_drift(x0, lr=0.1, steps=300, min_positive=0.0, max_positive=0.6,
                        min_abs=0.0, max_abs=100.0)
    frac = (x > 0).float().mean(dim=0)
    # The mean/std bound for max_positive 0.6 is 0.8139535 * atanh(0.2) = 0.165; after 300 steps the
    # mean has moved a long way towards it (measured ~0.91 positive); anything below 0.97 shows the
    # drift has the right sign (a wrong sign keeps it at 1.0).
    assert (frac < 0.97).all(), frac


def test_whiten_extra_gradient_lowers_the_metric():
    torch.manual_seed(3)
    x = torch.randn(400, 1) @ torch.ones(1, 16) + 0.3 * torch.randn(400, 16)  # nearly rank 1
    w = Whiten(num_groups=1, whitening_limit=1.5, prob=(0.025, 0.25), grad_scale=0.1)
    w.forced = True
    before = whitening_metric(x, 1).item()
    for _ in range(100):
        xr = x.clone().requires_grad_(True)
        g = torch.randn_like(x)
        w(xr).backward(g)
        x = x - 0.3 * (xr.grad - g)
    after = whitening_metric(x, 1).item()
    assert before > 10 and after < 2.0, (before, after)
