"""Plain per-parameter ScaledAdam step, written straight from icefall's ScaledAdam.step
(egs/librispeech/ASR/zipformer/optim.py at icefall 36e0420). Slow (a few torch ops per parameter) and obviously correct: it is the
`implementation="reference"` path and the yardstick the fast paths are tested against.

State layout (shared by every implementation, so state_dicts are interchangeable):
  per parameter: step (int), exp_avg_sq (fp32, like p), delta (fp32 momentum, like p);
  non-scalars add param_rms (fp32 0-dim), scale_grads (fp32 [size_update_period]),
  scale_exp_avg_sq (fp32 0-dim);
  the group's first parameter also holds the clipping state: model_norms (fp32 [period]),
  model_norm_threshold (fp32 0-dim, once set) and num_clipped (int64 0-dim).
"""
from __future__ import annotations

import logging
import math

import torch

logger = logging.getLogger("zipformer_fast.optim")

IRREGULAR_ESTIMATE_STEPS = (10, 20, 40)


def is_scalar(p: torch.Tensor) -> bool:
    """icefall's "scalar": a parameter with one element (BiasNorm.log_scale)."""
    return p.numel() == 1


def init_param_state(p: torch.Tensor, state: dict, size_update_period: int) -> None:
    """Fill an empty per-parameter state (icefall creates it on the parameter's first step)."""
    state["step"] = 0
    state["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    state["delta"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
    if not is_scalar(p):
        pf = p.detach().float()
        state["param_rms"] = pf.pow(2).mean().sqrt()
        state["scale_grads"] = torch.zeros(size_update_period, dtype=torch.float32, device=p.device)
        state["scale_exp_avg_sq"] = torch.zeros((), dtype=torch.float32, device=p.device)


def recompute_threshold(clip_state: dict, step: int, clipping_scale: float, period: int) -> None:
    """At step % period == 0 and at steps 10/20/40: threshold = scale * median of recent norms
    (of the top `step` entries at 10/20/40, doubled there). Host sync is allowed here."""
    irregular = [i for i in IRREGULAR_ESTIMATE_STEPS if i < period]
    sorted_norms = clip_state["model_norms"].sort()[0].to("cpu")
    if step in irregular:
        sorted_norms = sorted_norms[-step:]
    n = sorted_norms.numel()
    quartiles = [sorted_norms[min(n - 1, (n // 4) * k)].item() for k in range(5)]
    median = quartiles[2]
    if median - median != 0:
        raise RuntimeError("Too many grads were not finite")
    threshold = clipping_scale * median
    if step in irregular:
        threshold = threshold * 2.0  # the norm still moves fast early on
    device = clip_state["model_norms"].device
    clip_state["model_norm_threshold"] = torch.tensor(threshold, dtype=torch.float32, device=device)
    num_clipped = clip_state.get("num_clipped")
    pct = 0.0 if num_clipped is None else float(num_clipped) * 100.0 / n
    clip_state["num_clipped"] = torch.zeros((), dtype=torch.int64, device=device)
    logger.warning(
        "Clipping_scale=%s, grad-norm quartiles %s, threshold=%.3e, percent-clipped=%.1f",
        clipping_scale, " ".join("%.3e" % q for q in quartiles), threshold, pct)


def should_recompute(step: int, period: int) -> bool:
    return step % period == 0 or step in [i for i in IRREGULAR_ESTIMATE_STEPS if i < period]


def _reference_gamma(group, params, grads, states, clip_state, first_step: bool) -> float:
    clipping_scale = group["clipping_scale"]
    step = 0 if first_step else states[0]["step"]
    if first_step or clipping_scale is None or step == 0:
        return 1.0
    period = group["clipping_update_period"]
    tot = torch.zeros((), dtype=torch.float32, device=params[0].device)
    for p, g, st in zip(params, grads, states):
        if is_scalar(p):
            tot += (g.float() ** 2).sum() * group["scalar_lr_scale"] ** 2
        else:
            tot += ((g.float() * st["param_rms"]) ** 2).sum()
    tot_norm = tot.sqrt()
    if "model_norms" not in clip_state:
        clip_state["model_norms"] = torch.zeros(period, dtype=torch.float32, device=tot.device)
    clip_state["model_norms"][step % period] = tot_norm
    if should_recompute(step, period):
        recompute_threshold(clip_state, step, clipping_scale, period)
    if "model_norm_threshold" not in clip_state:
        return 1.0
    ans = (clip_state["model_norm_threshold"] / (tot_norm + 1.0e-20)).item()
    ans = 0.0 if math.isnan(ans) else min(1.0, ans)  # NaN norm: drop this step's gradient
    if ans < 1.0:
        clip_state["num_clipped"] += 1
    return ans


@torch.no_grad()
def reference_group_step(group: dict, params, grads, states, clip_state: dict, first_step: bool):
    """One ScaledAdam step for one parameter group, parameter by parameter.
    grads: list of tensors (a missing gradient already replaced by zeros)."""
    gamma = _reference_gamma(group, params, grads, states, clip_state, first_step)
    lr = group["lr"]
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    period = group["size_update_period"]
    for p, grad, st in zip(params, grads, states):
        t = st["step"]
        g = grad.float()
        if gamma == 0.0:
            g = torch.zeros_like(g)  # also removes inf/NaN
        elif gamma != 1.0:
            g = g * gamma
        v = st["exp_avg_sq"]
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc = 1 - beta2 ** (t + 1)
        vh = v * (1.0 / bc) if bc < 0.99 else v
        scalar = is_scalar(p)
        lr_eff = lr * group["scalar_lr_scale"] if scalar else lr
        d = -lr_eff * g / (vh.sqrt() + eps)
        if not scalar:
            pf = p.float()
            st["scale_grads"][t % period] = (pf * g).sum()
            if t % period == period - 1:
                st["param_rms"].copy_(pf.pow(2).mean().sqrt())
            rms = st["param_rms"]
            d = d * rms.clamp(min=group["param_min_rms"])
            if t % period == period - 1 and t > 0:
                sg = st["scale_grads"]
                b2c = beta2 ** period
                sea = st["scale_exp_avg_sq"]
                sea.mul_(b2c).add_((sg ** 2).mean(), alpha=1 - b2c)
                bc2 = 1 - b2c ** ((t + 1) // period)
                s = -(lr * group["scalar_lr_scale"]) * bc2 ** 0.5 * sg.sum() / (sea.sqrt() + eps)
                s = torch.where(rms < group["param_min_rms"], torch.zeros_like(s), s)
                s = s.clamp(min=-0.1, max=0.1)
                s = torch.minimum(s, (group["param_max_rms"] - rms) / rms)
                d = d + pf * s
        m = st["delta"]
        m.mul_(beta1).add_(d, alpha=1 - beta1)
        p.add_(m)
        if scalar:
            p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        st["step"] = t + 1
