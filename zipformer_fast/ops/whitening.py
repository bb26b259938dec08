"""The Whiten module's metric and its gradient in closed form (the fused backend's Whiten backward).

icefall's Whiten (scaling.py, _whitening_metric) measures how far each channel group's centred
covariance C = xcᵀ xc (over frames) is from a multiple of I:

    d = tr(C) / (G c),   s = ||C||_F² / (G c),   metric = s / (d² + 1e-20)

and, when the metric exceeds the limit, adds its gradient to the incoming one. The reference
(nn.grad_shapers) differentiates the metric with autograd: about forty launches per firing. Since
s and d are quadratic in xc, the gradient is one batched GEMM,

    d metric / d xc = xc (α C − β I),   α = 4 / (G c (d² + ε)),   β = 4 s d / (G c (d² + ε)²),

and passes the centring unchanged (its rows sum to zero, so their mean over frames is zero): about
ten launches. The metric is read on the host, as the reference's `metric < limit` does.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def whitening_metric_and_grad(x: Tensor, num_groups: int, limit: float) -> Tuple[float, Optional[Tensor]]:
    """(metric, d metric / d x or None when metric < limit) for x (..., channels) in fp32."""
    xf = x.reshape(-1, x.shape[-1])
    frames, channels = xf.shape
    c = channels // num_groups
    xg = xf.reshape(frames, num_groups, c).transpose(0, 1)        # (G, N, c)
    xc = xg - xg.mean(dim=1, keepdim=True)
    covar = torch.matmul(xc.transpose(1, 2), xc)                  # (G, c, c)
    gc = num_groups * c
    flat = covar.reshape(-1)
    trace_sq = torch.stack((torch.diagonal(covar, dim1=1, dim2=2).sum(), torch.dot(flat, flat)))
    tr, sq = trace_sq.tolist()                                     # the one host read
    d, s = tr / gc, sq / gc
    den = d * d + 1.0e-20
    metric = s / den
    if metric < limit:
        return metric, None
    alpha, beta = 4.0 / (gc * den), 4.0 * s * d / (gc * den * den)
    grad = torch.baddbmm(xc, xc, covar, beta=-beta, alpha=alpha)  # xc (α C − β I)
    return metric, grad.transpose(0, 1).reshape(x.shape)
