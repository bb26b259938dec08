"""NonlinAttention's two element-wise gates (icefall NonlinAttention), as ops that store less:

    tanh_gate(x, s)             = x * tanh(s)
    mul_linear(a, b, W, bias)   = linear(a * b, W, bias)          (the gate y feeding out_proj)

x, s, b are chunks of in_proj's output and a is the attention output; all are saved for backward
by their producers or consumers anyway.

Reference: the plain composition. Autograd saves tanh(s) besides x and s, and the product a * b
(out_proj's input) besides a and b.

Fused path (backend "triton"; pure PyTorch autograd.Functions): save only the factors, and
recompute tanh(s) / a * b in backward with the same torch op (bit-identical). tanh_gate then applies
the product and tanh backward formulas autograd uses (aten.tanh_backward), so its gradients equal
the composition's. mul_linear computes the linear's gradients as two GEMMs on the flattened rows
(_registry.linear_grads: dX = dY W, dW = dY^T X, db = sum dY), the same products autograd forms,
possibly summed in another order. Under autocast the GEMMs run in the autocast dtype, as F.linear would. Each saves one
(T, B, C) tensor per call. Not double-differentiable.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backend import use_triton_for
from ._registry import autocast_enabled, backward_once, compute_dtype, linear_grads


def tanh_gate_reference(x: Tensor, s: Tensor) -> Tensor:
    return x * torch.tanh(s)


def mul_linear_reference(a: Tensor, b: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    return F.linear(a * b, weight, bias)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


class _TanhGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s):
        ctx.save_for_backward(x, s)
        return x * torch.tanh(s)

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        x, s = ctx.saved_tensors
        t = torch.tanh(s)
        need = ctx.needs_input_grad
        return (grad * t if need[0] else None), (torch.ops.aten.tanh_backward(grad * x, t) if need[1] else None)


def tanh_gate(x: Tensor, s: Tensor) -> Tensor:
    if x.shape == s.shape and x.numel() > 0 and _needs_grad(x, s) and use_triton_for(x, s):
        return _TanhGate.apply(x, s)
    return tanh_gate_reference(x, s)


class _MulLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, weight, bias, cdt):
        p = a * b
        w, bb = weight, bias
        if cdt is not None:
            p, w = p.to(cdt), w.to(cdt)
            bb = None if bias is None else bias.to(cdt)
        ctx.cdt = cdt
        ctx.save_for_backward(a, b, weight, bias)
        return F.linear(p, w, bb)

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        a, b, weight, bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        cdt = ctx.cdt
        w = weight if cdt is None else weight.to(cdt)
        p = a * b  # out_proj's input, recomputed
        dp, dw, dbias = linear_grads(grad, p if cdt is None else p.to(cdt), w, bias, need[0] or need[1], need[2],
                                     need[3])
        da = db_ = None
        if dp is not None:
            dp = dp.to(p.dtype)
            da = dp * b if need[0] else None
            db_ = dp * a if need[1] else None
        dw = None if dw is None else dw.to(weight.dtype)
        return da, db_, dw, dbias, None


def mul_linear(a: Tensor, b: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if (a.shape == b.shape and a.numel() > 0 and _needs_grad(a, b, weight, bias)
            and use_triton_for(a, b, weight, bias)):
        cdt = compute_dtype(a) if autocast_enabled(a) else None
        if cdt is None and weight.dtype != torch.promote_types(a.dtype, b.dtype):
            return mul_linear_reference(a, b, weight, bias)  # F.linear raises the dtype mismatch
        return _MulLinear.apply(a, b, weight, bias, cdt)
    return mul_linear_reference(a, b, weight, bias)
