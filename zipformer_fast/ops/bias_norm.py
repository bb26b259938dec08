"""BiasNorm (paper eq. 4; icefall BiasNorm):

    y = x * exp(log_scale) / sqrt(mean_c((x - bias)^2))

over the channel dim (last). The bias enters only the RMS; there is no epsilon. `log_scale` is a
0-dim tensor. The training-time soft limit on log_scale (limit_param_value) is applied by the module
before calling this op (it only edits log_scale's gradient, so it composes with either path).
Statistics are computed in fp32; the output has x's dtype.

Paths:
- reference: plain autograd of the formula (saves x in fp32 if x is fp16/bf16, the centred
  difference and more).
- fused (kernels/bias_norm.py; an autograd.Function in eager mode, the custom op
  zipformer_fast::bias_norm_fwd under torch.compile): one pass per row in fp32.
  Saved for backward: x itself (as icefall, store_output_for_backprop=False) and the
  parameters. Backward recomputes r = rsqrt(mean((x-b)^2)) and the rest in one pass over each
  row; bias and log_scale gradients come from per-program partial sums (no atomics),
  folded by a second small kernel into the parameters' dtypes.
  x needs a unit channel stride (other layouts are copied); rows may be strided.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._registry import (
    CUSTOM_OP, FUNCTION, LAUNCH, REFERENCE, FusedOp, backward_once, eager_apply, empty_out, kernels, register_autograd,
    route, row_layout,
)

MAX_FUSED_DIM = 16384  # one row must fit a program's registers; wider rows use the reference


def bias_norm_reference(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    xf = x.float()
    scales = (torch.mean((xf - bias.float()) ** 2, dim=-1, keepdim=True) ** -0.5) * log_scale.float().exp()
    return (xf * scales).to(x.dtype)


def _fwd_fake(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def _bias_norm_fwd_impl(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    x2, n, stride = row_layout(x)
    y = empty_out(x)
    kernels("bias_norm").forward(x2, n, x.shape[-1], stride, bias if bias.is_contiguous() else bias.contiguous(),
                                 log_scale, y)
    return y


def _bwd_fake(grad: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(log_scale), torch.empty_like(bias)


def _bias_norm_bwd_impl(grad: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    x2, n, stride = row_layout(x)
    dx = empty_out(x)
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format)
    dls = torch.empty_like(log_scale, memory_format=torch.contiguous_format)
    kernels("bias_norm").backward(grad if grad.is_contiguous() else grad.contiguous(), x2, n, x.shape[-1], stride,
                                  bias if bias.is_contiguous() else bias.contiguous(), log_scale, dx, dbias, dls)
    return dx, dls, dbias


_bias_norm_fwd = FusedOp("bias_norm_fwd", _bias_norm_fwd_impl, _fwd_fake)
_bias_norm_bwd = FusedOp("bias_norm_bwd", _bias_norm_bwd_impl, _bwd_fake)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad_y):
    return _bias_norm_bwd.op(grad_y, *ctx.saved_tensors)


register_autograd(_bias_norm_fwd.op, _backward, _setup)


class _BiasNormFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensors."""

    @staticmethod
    def forward(ctx, x, log_scale, bias):
        ctx.save_for_backward(x, log_scale, bias)
        return _bias_norm_fwd_impl(x, log_scale, bias)

    @staticmethod
    @backward_once
    def backward(ctx, grad_y):
        return _bias_norm_bwd_impl(grad_y, *ctx.saved_tensors)


_apply_bias_norm = eager_apply(_BiasNormFused)


def bias_norm(x: Tensor, log_scale: Tensor, bias: Tensor) -> Tensor:
    path = route(x, log_scale, bias) if x.shape[-1] <= MAX_FUSED_DIM and x.numel() > 0 else REFERENCE
    if path == FUNCTION:
        return _apply_bias_norm(x, log_scale, bias)
    if path == LAUNCH:
        return _bias_norm_fwd_impl(x, log_scale, bias)
    if path == CUSTOM_OP:
        return _bias_norm_fwd.op(x, log_scale, bias)
    return bias_norm_reference(x, log_scale, bias)
