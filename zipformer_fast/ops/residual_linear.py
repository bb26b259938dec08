"""The last op of a residual branch and the residual add, as one GEMM at inference:

    residual_linear(residual, x, weight, bias, activation=None, mul=None)
        = residual + linear(pre(x), weight, bias),   pre(x) = act(x) (* mul)  or  x (* mul)

The Zipformer layer ends each of its eight branches (three feed-forwards, non-linear attention, two
self-attentions, two convolution modules) with an output projection whose result is added to the
residual stream. Eager PyTorch launches the projection and then the add; with no gradient to keep,
the fused path (kernels/residual_linear.py) adds the residual in the GEMM's epilogue, and
non-linear attention's gate `x * y` and the convolution module's SwooshR ride in its prologue.

Only without gradients: in training a Balancer, Whiten or skip mask sits between the projection and
the add (the layer then calls the modules without a residual), and the composition's autograd
stores nothing the fused op would save. With gradients, or on the reference backend, this is the
composition `residual + linear(...)`, with the activation fused into the linear where
activation_dropout_linear fuses it.

Rounding follows the composition: the linear's output is rounded to its dtype (the GEMM dtype:
autocast's inside an autocast region), then added to the residual in fp32 and stored in the dtype
torch's promotion gives the sum.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backend import use_triton_for
from ._registry import FusedOp, contiguous_rows, gemm_weight, kernels, needs_grad
from .activation_linear import _activation_constants, activation_dropout_linear


def residual_linear_reference(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                              activation: Optional[str] = None, mul: Optional[Tensor] = None) -> Tensor:
    if activation is not None:
        if mul is not None:
            raise ValueError("residual_linear: an activation and a multiplier together are not supported")
        return residual + activation_dropout_linear(x, weight, bias, activation)
    return residual + F.linear(x if mul is None else x * mul, weight, bias)


def _x_rows(x: Tensor):
    """(tensor, inner, outer stride, inner stride) addressing x's rows m as
    (m // inner) * outer + (m % inner) * inner_stride with a unit channel stride, without a copy
    when x is a (T, B, K) view of that form; else a contiguous copy."""
    if x.stride(-1) == 1:
        if x.dim() == 3:
            return x, x.shape[1], x.stride(0), x.stride(1)
        if x.dim() == 2:
            return x, x.shape[0] or 1, 0, x.stride(0)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    return x2, x2.shape[0] or 1, 0, x2.stride(0)


def _fwd_fake(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], mul: Optional[Tensor],
              act: bool, shift: float, offset: float) -> Tensor:
    return residual.new_empty(residual.shape, dtype=torch.promote_types(residual.dtype, weight.dtype))


def _fwd_impl(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], mul: Optional[Tensor],
              act: bool, shift: float, offset: float) -> Tensor:
    xt, inner, s_outer, s_inner = _x_rows(x)
    r2 = residual.reshape(-1, residual.shape[-1])
    if not r2.is_contiguous():
        r2 = r2.contiguous()
    y = torch.empty(r2.shape, dtype=torch.promote_types(residual.dtype, weight.dtype), device=residual.device)
    m2 = contiguous_rows(mul) if mul is not None else None
    w = weight if weight.is_contiguous() else weight.contiguous()
    kernels("residual_linear").forward(xt, inner, s_outer, s_inner, m2, w, bias, r2, y, act, shift, offset)
    return y.view(residual.shape)


_residual_linear_fwd = FusedOp("residual_linear_fwd", _fwd_impl, _fwd_fake)


def residual_linear(residual: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor],
                    activation: Optional[str] = None, mul: Optional[Tensor] = None) -> Tensor:
    if (x.numel() > 0 and residual.dim() == x.dim() and residual.shape[:-1] == x.shape[:-1]
            and (mul is None or (mul.shape == x.shape and activation is None))
            and not needs_grad(residual, x, weight, bias, mul) and use_triton_for(residual, x, weight, bias, mul)):
        shift, offset = _activation_constants(activation) if activation is not None else (0.0, 0.0)
        # x goes in its own dtype: the prologue's activation / product run in it, then cast to the
        # GEMM dtype (W's), as autocast casts the composition's linear input.
        w = gemm_weight(x, weight, "residual_linear")
        b = bias if bias is None or bias.dtype == w.dtype else bias.to(w.dtype)
        return _residual_linear_fwd(residual, x, w, b, mul, activation is not None, shift, offset)
    return residual_linear_reference(residual, x, weight, bias, activation, mul)
