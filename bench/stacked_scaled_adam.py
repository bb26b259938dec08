"""ScaledAdam with icefall's own execution strategy, for comparison only (bench/optimizer.py):
parameters are bucketed by (dtype, shape), each bucket is torch.stack-ed (params and grads) every
step, updated as one batched tensor, and copied back. Same math as zipformer_fast/optim/reference.py
on the stacked tensors; state lives per bucket in the bucket's first parameter, as in icefall, so
its state_dict is NOT interchangeable with ScaledAdam's per-parameter state. Not used by training.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch.optim import Optimizer

from zipformer_fast.optim.reference import recompute_threshold, should_recompute


class StackedScaledAdam(Optimizer):
    def __init__(self, params, lr=3e-02, clipping_scale=None, betas=(0.9, 0.98),
                 scalar_lr_scale=0.1, eps=1.0e-08, param_min_rms=1.0e-05, param_max_rms=3.0,
                 scalar_max=10.0, size_update_period=4, clipping_update_period=100):
        defaults = dict(lr=lr, clipping_scale=clipping_scale, betas=betas,
                        scalar_lr_scale=scalar_lr_scale, eps=eps, param_min_rms=param_min_rms,
                        param_max_rms=param_max_rms, scalar_max=scalar_max,
                        size_update_period=size_update_period,
                        clipping_update_period=clipping_update_period)
        super().__init__(params, defaults)

    @staticmethod
    def _buckets(params):
        by_key = defaultdict(list)
        for p in params:
            by_key[(str(p.dtype), *p.shape)].append(p)
        return [by_key[k] for k in sorted(by_key)]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            buckets = self._buckets(group["params"])
            stacked = []
            for b in buckets:
                p = torch.stack(b)
                g = torch.stack([torch.zeros_like(x) if x.grad is None else x.grad for x in b])
                stacked.append((p, g, self.state[b[0]]))
            gamma = 1.0 if len(stacked[0][2]) == 0 else self._gamma(group, stacked)
            for p, g, st in stacked:
                if gamma != 1.0:
                    g.mul_(gamma)
                self._update(group, p, g, st)
            for (p, _, _), b in zip(stacked, buckets):
                for i, x in enumerate(b):
                    x.copy_(p[i])
        return loss

    def _gamma(self, group, stacked) -> float:
        first = stacked[0][2]
        step = first["step"]
        scale = group["clipping_scale"]
        if scale is None or step == 0:
            return 1.0
        period = group["clipping_update_period"]
        tot = torch.zeros((), device=stacked[0][0].device)
        for p, g, st in stacked:
            if p.numel() == p.shape[0]:
                tot += (g.float() ** 2).sum() * group["scalar_lr_scale"] ** 2
            else:
                tot += ((g.float() * st["param_rms"]) ** 2).sum()
        norm = tot.sqrt()
        if "model_norms" not in first:
            first["model_norms"] = torch.zeros(period, device=norm.device)
        first["model_norms"][step % period] = norm
        if should_recompute(step, period):
            recompute_threshold(first, step, scale, period)
        if "model_norm_threshold" not in first:
            return 1.0
        ans = (first["model_norm_threshold"] / (norm + 1.0e-20)).item()  # the per-step sync icefall has
        ans = 0.0 if ans != ans else min(1.0, ans)
        if ans < 1.0:
            first["num_clipped"] += 1
        if ans == 0.0:
            for _, g, _ in stacked:
                g.zero_()
        return ans

    def _update(self, group, p, g, st):
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        period = group["size_update_period"]
        scalar = p.numel() == p.shape[0]
        dims = list(range(1, p.ndim))
        if "step" not in st:
            st["step"] = 0
            st["exp_avg_sq"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            st["delta"] = torch.zeros(p.shape, dtype=torch.float32, device=p.device)
            if not scalar:
                st["param_rms"] = (p.float() ** 2).mean(dim=dims, keepdim=True).sqrt()
                st["scale_exp_avg_sq"] = torch.zeros_like(st["param_rms"])
                st["scale_grads"] = torch.zeros(period, *st["param_rms"].shape, device=p.device)
        t = st["step"]
        v = st["exp_avg_sq"]
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        bc = 1 - beta2 ** (t + 1)
        vh = v * (1.0 / bc) if bc < 0.99 else v
        d = -(lr * group["scalar_lr_scale"] if scalar else lr) * g / (vh.sqrt() + eps)
        if not scalar:
            rms = st["param_rms"]
            st["scale_grads"][t % period] = (p * g).sum(dim=dims, keepdim=True)
            if t % period == period - 1:
                rms.copy_((p.float() ** 2).mean(dim=dims, keepdim=True).sqrt())
            d *= rms.clamp(min=group["param_min_rms"])
            if t % period == period - 1 and t > 0:
                sg = st["scale_grads"]
                b2c = beta2 ** period
                st["scale_exp_avg_sq"].mul_(b2c).add_((sg ** 2).mean(dim=0), alpha=1 - b2c)
                bc2 = 1 - b2c ** ((t + 1) // period)
                s = -(lr * group["scalar_lr_scale"]) * bc2 ** 0.5 * sg.sum(dim=0) / (
                    st["scale_exp_avg_sq"].sqrt() + eps)
                s.masked_fill_(rms < group["param_min_rms"], 0.0)
                s.clamp_(min=-0.1, max=0.1)
                s = torch.minimum(s, (group["param_max_rms"] - rms) / rms)
                d.add_(p * s)
        m = st["delta"]
        m.mul_(beta1).add_(d, alpha=1 - beta1)
        p.add_(m)
        if scalar:
            p.clamp_(min=-group["scalar_max"], max=group["scalar_max"])
        st["step"] = t + 1
