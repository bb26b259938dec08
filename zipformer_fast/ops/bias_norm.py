"""BiasNorm (paper eq. 4; icefall BiasNorm):

    y = x * exp(log_scale) / sqrt(mean_c((x - bias)^2))

over the channel dim (last). The bias enters only the RMS; there is no epsilon. `log_scale` is a
0-dim tensor. The training-time soft limit on log_scale (limit_param_value) is applied by the module
before calling this op (it only edits log_scale's gradient, so it composes with either path).
Statistics are computed in fp32; the output has x's dtype.

Paths:
- reference: plain autograd of the formula (saves x in fp32 if x is fp16/bf16, the centred
  difference and more).
- fused (kernels/bias_norm.py, op zipformer_fast::bias_norm_fwd): one pass per row in fp32.
  Saved for backward: x itself (as icefall, store_output_for_backprop=False), the per-row
  r = rsqrt(mean((x-b)^2)) in fp32 (4 bytes/row), and the parameters. Backward recomputes the rest
  in one pass; bias and log_scale gradients come from per-program partial sums (no atomics).
  x needs a unit channel stride (other layouts are copied); rows may be strided.
"""
from typing import Tuple

import torch
from torch import Tensor

from ..backend import use_triton_for
from ._registry import contiguous_rows, custom_op, kernels, register_autograd

MAX_FUSED_DIM = 16384  # one row must fit a program's registers; wider rows use the reference


def bias_norm_reference(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    xf = x.float()
    scales = (torch.mean((xf - bias.float()) ** 2, dim=-1, keepdim=True) ** -0.5) * log_scale.float().exp()
    return (xf * scales).to(x.dtype)


def _fwd_fake(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    n = x.numel() // x.shape[-1]
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty((n,), dtype=torch.float32)


@custom_op("bias_norm_fwd", fake=_fwd_fake)
def _bias_norm_fwd(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    x2 = contiguous_rows(x)
    y2 = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    rstd = torch.empty((x2.shape[0],), dtype=torch.float32, device=x.device)
    kernels("bias_norm").forward(x2, bias.contiguous(), log_scale, y2, rstd)
    return y2.view(x.shape), rstd


def _bwd_fake(grad: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(log_scale), torch.empty_like(bias)


@custom_op("bias_norm_bwd", fake=_bwd_fake)
def _bias_norm_bwd(grad: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, rstd: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    x2 = contiguous_rows(x)
    g2 = grad.reshape(x2.shape).contiguous()
    dx2 = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    dbias, dls = kernels("bias_norm").backward(g2, x2, bias.contiguous(), log_scale, rstd, dx2)
    return dx2.view(x.shape), dls.to(log_scale.dtype).reshape(log_scale.shape), dbias.to(bias.dtype)


def _setup(ctx, inputs, output):
    x, log_scale, bias = inputs
    ctx.save_for_backward(x, log_scale, bias, output[1])


def _backward(ctx, grad_y, _grad_rstd):
    x, log_scale, bias, rstd = ctx.saved_tensors
    dx, dls, db = _bias_norm_bwd(grad_y, x, log_scale, bias, rstd)
    return dx, dls, db


register_autograd(_bias_norm_fwd, _backward, _setup)


def bias_norm(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    if x.shape[-1] <= MAX_FUSED_DIM and x.numel() > 0 and use_triton_for(x, log_scale, bias):
        return _bias_norm_fwd(x, log_scale, bias)[0]
    return bias_norm_reference(x, log_scale, bias)
