"""ScaledAdam details pinned with hand-computed numbers (icefall optim.py ScaledAdam), on every implementation.

icefall's zipformer/optim.py exists in two forms. The older one (class methods _step_one_batch /
_size_update / _step_scalar) and the current one (functions basic_step / scaling_step /
momentum_step, the one this package follows) differ in three places:
  1. scalars: the current form applies Adam's bias correction only while 1 - beta2^(t+1) < 0.99
     (t < 228), like non-scalars; the older one applies it on every step;
  2. the learned-scale step is clamped to [-0.1, 0.1] before the param_max_rms cap (older: no clamp);
  3. scalars are clamped to [-scalar_max, scalar_max] after the update (older: before it, so the
     parameter could end a step past scalar_max).
A trajectory comparison against the current form agrees to fp32 rounding (max relative difference
~1e-6 over 300 steps with the same gradients); these tests pin the three points, and the clipping
threshold schedule, with numbers computed here by hand from icefall's formulas, so a regression
towards the older behaviour (or any other drift) fails.
"""
import logging
import math

import pytest
import torch

from zipformer_fast.optim import ScaledAdam
from zipformer_fast.optim.extension import load_extension

BETA1, BETA2, EPS = 0.9, 0.98, 1e-8


def _impls():
    out = ["reference", "foreach"]
    if load_extension("cpu")[0] is not None:
        out.append("extension")
    return out


IMPLS = _impls()


def _run(param, grads, impl, **kw):
    """Apply ScaledAdam to `param` with the given gradient sequence; return values after each step."""
    opt = ScaledAdam([param], implementation=impl, **kw)
    vals = []
    logging.disable(logging.WARNING)
    try:
        for g in grads:
            param.grad = g.clone()
            opt.step()
            vals.append(param.detach().clone())
    finally:
        logging.disable(logging.NOTSET)
    return opt, vals


@pytest.mark.parametrize("impl", IMPLS)
def test_scalar_bias_correction_stops_at_099(impl):
    """A scalar with a constant gradient 1: v_t = 1 - beta2^(t+1) exactly, so the step is
    -lr*0.1 while the correction is applied (t < 228) and -lr*0.1/sqrt(1 - beta2^(t+1)) after."""
    lr, steps = 0.045, 300
    p = torch.nn.Parameter(torch.zeros(()))
    _, vals = _run(p, [torch.ones(())] * steps, impl, lr=lr)

    def expected(always_correct):
        m = x = 0.0
        for t in range(steps):
            bc = 1 - BETA2 ** (t + 1)
            v_hat = 1.0 if (bc < 0.99 or always_correct) else bc
            m = BETA1 * m + (1 - BETA1) * (-(lr * 0.1) / (math.sqrt(v_hat) + EPS))
            x += m
        return x

    want, older = expected(False), expected(True)
    assert want == pytest.approx(-1.31031, abs=1e-5)  # hand value: 300 steps of about -0.0045
    assert abs(want - older) > 5e-4  # the older icefall form ends ~8e-4 further
    assert vals[-1].item() == pytest.approx(want, rel=1e-5, abs=0)


@pytest.mark.parametrize("impl", IMPLS)
def test_scalar_clamped_after_the_update(impl):
    """Constant gradient -1 pushes a scalar up by ~lr*0.1 per step; with scalar_max=0.05 it must
    sit exactly at 0.05 once reached (a clamp before the add would leave it at 0.05 + momentum)."""
    p = torch.nn.Parameter(torch.zeros(()))
    _, vals = _run(p, [-torch.ones(())] * 60, impl, lr=0.045, scalar_max=0.05)
    cap = torch.tensor(0.05, dtype=torch.float32).item()
    assert all(v.item() <= cap for v in vals)
    assert vals[-1].item() == cap and vals[-20].item() == cap


def _symmetric_size_update(lr, grad_sign, param_max_rms):
    """Hand computation for p = a*[1, -1], g = grad_sign*[1, -1], period 4: |u| = lr (Adam on a
    constant gradient with the bias correction), rms = |a| (initial, then recomputed at t=3),
    scale_grads_t = sum(p*g) = 2*a_t*grad_sign; the size step at t=3 is
    s = -(lr*0.1)*sqrt(bc)*sum(sg)/sqrt(bc*mean(sg^2)) = -(lr*0.1)*sum(sg)/sqrt(mean(sg^2)),
    clamped to [-0.1, 0.1], then capped by (param_max_rms - rms)/rms."""
    a, m, rms, sg = 1.0, 0.0, 1.0, []
    raw = None
    for t in range(4):
        sg.append(2 * a * grad_sign)
        if t == 3:
            rms = abs(a)
        d = -lr * grad_sign * rms  # Adam direction (|g|/sqrt(g^2) = 1) times rms
        if t == 3:
            raw = -(lr * 0.1) * sum(sg) / math.sqrt(sum(x * x for x in sg) / 4)
            s = min(max(raw, -0.1), 0.1)
            s = min(s, (param_max_rms - rms) / rms)
            d += a * s
        m = BETA1 * m + (1 - BETA1) * d
        a += m
    return a, raw, s


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["shrink_clamped", "grow_capped"])
def test_size_step_clamp_and_cap(impl, case):
    if case == "shrink_clamped":
        sign, max_rms, want_a, want_raw, want_s = 1.0, 3.0, 0.14681, -0.38515, -0.1
    else:
        sign, max_rms, want_a, want_raw, want_s = -1.0, 1.6, 1.9649, 0.39417, 0.024984
    a, raw, s = _symmetric_size_update(1.0, sign, max_rms)
    assert (a, raw, s) == pytest.approx((want_a, want_raw, want_s), abs=1e-4)  # hand values
    p = torch.nn.Parameter(torch.tensor([1.0, -1.0]))
    g = sign * torch.tensor([1.0, -1.0])
    _, vals = _run(p, [g] * 4, impl, lr=1.0, param_max_rms=max_rms)
    assert vals[-1].tolist() == pytest.approx([a, -a], rel=2e-6)
    # without the [-0.1, 0.1] clamp (older icefall) the shrink case would end at ~0.1343
    assert case != "shrink_clamped" or abs(a - 0.1343) > 0.01


@pytest.mark.parametrize("impl", IMPLS)
def test_clipping_threshold_schedule(impl):
    """One scalar parameter: the clipping norm is 0.1*|g_t| (scalar_lr_scale weight). The
    threshold is 2*2*median of the top-t norms at t = 10, 20, 40 (median = sorted[(t//4)*2]) and
    2*median of all 100 at t = 100 (median = sorted[50]); no threshold (no clipping) before 10."""
    gvals = [1.0 + ((7 * t) % 13) + 0.01 * t for t in range(101)]
    for t in (12, 15, 55, 77):
        gvals[t] = 60.0  # outliers: clipped
    norms = {t: 0.1 * gvals[t] for t in range(1, 101)}  # step 0 records nothing
    p = torch.nn.Parameter(torch.zeros(()))
    opt = ScaledAdam([p], lr=1e-4, clipping_scale=2.0, implementation=impl)
    logging.disable(logging.WARNING)
    try:
        for t in range(101):
            p.grad = torch.tensor(gvals[t])
            opt.step()
            st = opt.state[p]
            if t < 10:
                assert "model_norm_threshold" not in st
            if t in (10, 20, 40, 100):
                recent = sorted(norms[i] for i in range(1, t + 1))
                if t < 100:
                    want = 2.0 * 2.0 * recent[(t // 4) * 2]
                else:
                    want = 2.0 * recent[50]
                assert float(st["model_norm_threshold"]) == pytest.approx(want, rel=1e-6), t
            if t == 19:  # clipped steps since the recompute at 10
                thr = float(st["model_norm_threshold"])
                assert int(st["num_clipped"]) == sum(norms[i] > thr for i in range(10, 20))
                assert int(st["num_clipped"]) > 0
    finally:
        logging.disable(logging.NOTSET)
