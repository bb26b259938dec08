"""ScaledAdam step with torch._foreach_* ops: the fallback when the compiled extension is not
available. Same state layout and semantics as reference.py; per-tensor scalars (param_rms,
scale_grads, ...) are stacked into small vectors so the size-update logic is a handful of ops.

Host syncs: none per step on the hot path except one when a clipping threshold exists (to know
whether gamma == 0, i.e. whether non-finite gradients must be zeroed rather than scaled: a
multiply by 0 would keep NaN). The extension path avoids even that one.
"""
from __future__ import annotations

import torch

from .clipping import clipping_factor
from .reference import is_scalar


def _split(params, grads, states):
    ns = [i for i, p in enumerate(params) if not is_scalar(p)]
    sc = [i for i, p in enumerate(params) if is_scalar(p)]
    return ns, sc


def _sum_products(a, b):
    """Per-tensor sum(a_i * b_i) for many tensors with a fixed number of ops (no foreach sum)."""
    prods = torch._foreach_mul(a, b)
    flat = torch.cat([x.reshape(-1) for x in prods])
    lengths = torch.tensor([x.numel() for x in prods], device=flat.device)
    return torch.segment_reduce(flat, "sum", lengths=lengths)


def _sq_norms(xs):
    return torch.stack(torch._foreach_norm(xs)).float() ** 2


@torch.no_grad()
def foreach_group_step(group: dict, params, grads, states, clip_state: dict, first_step: bool):
    lr = group["lr"]
    beta1, beta2 = group["betas"]
    eps = group["eps"]
    period = group["size_update_period"]
    slr = group["scalar_lr_scale"]
    t = states[0]["step"]
    ns, sc = _split(params, grads, states)
    g32 = [g if g.dtype == torch.float32 else g.float() for g in grads]

    # A. clipping factor from the old param_rms
    gamma = None
    if group["clipping_scale"] is not None and not first_step and t != 0:
        gg = _sq_norms(g32)
        w = torch.full((len(params),), slr * slr, dtype=torch.float32, device=gg.device)
        if ns:
            rms_old = torch.stack([states[i]["param_rms"] for i in ns])
            w[torch.tensor(ns, device=gg.device)] = rms_old ** 2
        gamma = clipping_factor(group, clip_state, (w * gg).sum(), t, first_step)
    if gamma is not None:
        if bool(gamma == 0):  # non-finite norm: drop the gradient (NaN * 0 would stay NaN)
            g32 = [torch.zeros_like(g) for g in g32]
        else:
            g32 = torch._foreach_mul(g32, gamma)

    # B.1 second moment and the Adam direction, every tensor
    vs = [states[i]["exp_avg_sq"] for i in range(len(params))]
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, g32, g32, value=1 - beta2)
    bc = 1 - beta2 ** (t + 1)
    vh = torch._foreach_mul(vs, 1.0 / bc) if bc < 0.99 else vs
    denom = torch._foreach_sqrt(vh)
    torch._foreach_add_(denom, eps)
    u = torch._foreach_div(g32, denom)  # the -lr factor is folded into the per-tensor coefficient

    # B.3 non-scalars: learned scale and rms-relative step size
    scale = None
    if ns:
        p_ns = [params[i].float() if params[i].dtype != torch.float32 else params[i] for i in ns]
        g_ns = [g32[i] for i in ns]
        sg = torch.stack([states[i]["scale_grads"] for i in ns])
        rms = torch.stack([states[i]["param_rms"] for i in ns])
        sea = torch.stack([states[i]["scale_exp_avg_sq"] for i in ns])
        sg[:, t % period] = _sum_products(p_ns, g_ns)
        if t % period == period - 1:
            numel = torch.tensor([params[i].numel() for i in ns], dtype=torch.float32, device=rms.device)
            rms = (_sq_norms(p_ns) / numel).sqrt()
        factor = (-lr) * rms.clamp(min=group["param_min_rms"])
        if t % period == period - 1 and t > 0:
            b2c = beta2 ** period
            sea = sea * b2c + (sg ** 2).mean(dim=1) * (1 - b2c)
            bc2 = 1 - b2c ** ((t + 1) // period)
            s = -(lr * slr) * bc2 ** 0.5 * sg.sum(dim=1) / (sea.sqrt() + eps)
            s = torch.where(rms < group["param_min_rms"], torch.zeros_like(s), s)
            s = torch.minimum(s.clamp(min=-0.1, max=0.1), (group["param_max_rms"] - rms) / rms)
            scale = s
            torch._foreach_copy_([states[i]["scale_exp_avg_sq"] for i in ns], torch.unbind(sea))
        torch._foreach_copy_([states[i]["scale_grads"] for i in ns], torch.unbind(sg))
        torch._foreach_copy_([states[i]["param_rms"] for i in ns], torch.unbind(rms))
    # d = u * (-lr * max(rms, min_rms)) [+ p * scale_step] for non-scalars, u * (-lr * 0.1) scalars
    d = list(u)
    if ns:
        d_ns = torch._foreach_mul([u[i] for i in ns], list(torch.unbind(factor)))
        if scale is not None:
            torch._foreach_add_(d_ns, torch._foreach_mul(p_ns, list(torch.unbind(scale))))
        for i, x in zip(ns, d_ns):
            d[i] = x
    if sc:
        for i, x in zip(sc, torch._foreach_mul([u[i] for i in sc], -(lr * slr))):
            d[i] = x

    # B.4 momentum on the full update, then the parameter
    ms = [states[i]["delta"] for i in range(len(params))]
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, d, alpha=1 - beta1)
    f32 = [i for i, p in enumerate(params) if p.dtype == torch.float32]
    if f32:
        torch._foreach_add_([params[i] for i in f32], [ms[i] for i in f32])
    for i, p in enumerate(params):
        if p.dtype != torch.float32:
            p.add_(ms[i])
    if sc:
        sp = [params[i] for i in sc]
        torch._foreach_clamp_min_(sp, -group["scalar_max"])
        torch._foreach_clamp_max_(sp, group["scalar_max"])
    for st in states:
        st["step"] = t + 1
