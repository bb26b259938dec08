"""The front of the convolution module (icefall ConvolutionModule, non-causal): in_proj, the gate
(with the Balancer icefall puts on the gate input) and the depthwise conv.

    x, s = linear(src, in_weight, in_bias).chunk(2, dim=-1)     src (T, B, C) -> x, s (T, B, D)
    s = Balancer(s)                                             identity forward (ops.balancer)
    u = (x * sigmoid(s)).permute(1, 2, 0)                       (B, D, T), padded frames zeroed
    y = conv1d(u, dw_weight, dw_bias, padding=K//2, groups=D)   dw_weight (D, 1, K), K odd

padding_mask (B, T) is True at padded frames. `balancer` is the BalancerConfig that nn.Balancer.draw
returned for this call, or None.

Reference: that composition. Autograd saves src, in_proj's (T, B, 2D) output (x and s), sigmoid(s)
and the masked u.

Fused path (backend "triton"; pure PyTorch): an autograd.Function that saves only src (which
nothing else stores), the (B, T) mask and the parameters. Backward recomputes in_proj's output
with the same F.linear call (under the forward's autocast dtype), the gate with the same torch ops,
runs aten.convolution_backward (what autograd's ConvolutionBackward runs), the mask / product /
sigmoid backward formulas autograd uses (aten.sigmoid_backward), the Balancer's gradient edit on
the recomputed s (ops.balancer.balancer_gradient), and in_proj's gradients as two GEMMs
(_registry.linear_grads: the products autograd forms, possibly summed in another order). So the
gradients are the composition's up to fp32 summation order (bit-identical on the CPU). Cost: in_proj's GEMM and one
element-wise pass again in backward; saved: 4 (T, B, D) tensors per call (in_proj's output is two).
Not double-differentiable. torch.compile(fullgraph=True) traces it unless the Balancer is active
(balancer_gradient calls torch.autograd.grad, as nn.Balancer's backward does).

Without gradients (inference) the fused path is one Triton GEMM (kernels/linear_glu.py) whose
epilogue applies the gate and the padding fill, writing u in (T, B, D) layout, and the same
F.conv1d on its (B, D, T) view: two launches where the composition makes five.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from ..backend import use_triton_for
from ._registry import (
    FusedOp, autocast_enabled, backward_once, compute_dtype, contiguous_rows, function_may_launch, gemm_weight,
    kernels, linear_grads,
)
from .balancer import BalancerConfig, balancer, balancer_gradient
from .traced_conv import conv, convolution_backward


def gated_depthwise_conv1d_reference(src: Tensor, in_weight: Tensor, in_bias: Optional[Tensor],
                                     padding_mask: Optional[Tensor], dw_weight: Tensor, dw_bias: Optional[Tensor],
                                     balancer_config: Optional[BalancerConfig] = None) -> Tensor:
    x, s = F.linear(src, in_weight, in_bias).chunk(2, dim=-1)
    s = balancer(s, balancer_config)
    u = (x * torch.sigmoid(s)).permute(1, 2, 0)
    if padding_mask is not None:
        u = u.masked_fill(padding_mask.unsqueeze(1).expand_as(u), 0.0)
    return conv(u, dw_weight, dw_bias, 1, dw_weight.shape[-1] // 2, dw_weight.shape[0])


def _gate(x: Tensor, sig: Tensor, padding_mask: Optional[Tensor]) -> Tensor:
    u = (x * sig).permute(1, 2, 0)
    if padding_mask is not None:
        u = u.masked_fill(padding_mask.unsqueeze(1).expand_as(u), 0.0)
    return u


class _GatedDepthwiseConv1d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, src, in_weight, in_bias, padding_mask, dw_weight, dw_bias, balancer_config, cdt):
        # Runs under the caller's autocast state, like the composition.
        x, s = F.linear(src, in_weight, in_bias).chunk(2, dim=-1)
        u = _gate(x, torch.sigmoid(s), padding_mask)
        ctx.balancer_config, ctx.cdt = balancer_config, cdt
        ctx.save_for_backward(src, in_weight, in_bias, padding_mask, dw_weight, dw_bias)
        return F.conv1d(u, dw_weight, dw_bias, 1, dw_weight.shape[-1] // 2, 1, dw_weight.shape[0])

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        src, in_weight, in_bias, padding_mask, dw_weight, dw_bias = ctx.saved_tensors
        need = ctx.needs_input_grad
        cdt = ctx.cdt
        # in_proj's output, recomputed as forward computed it (autocast copies of the operands).
        src_c, in_w, in_b = (t if t is None or cdt is None else t.to(cdt) for t in (src, in_weight, in_bias))
        x, s = F.linear(src_c, in_w, in_b).chunk(2, dim=-1)
        sig = torch.sigmoid(s)
        u = _gate(x, sig, padding_mask)
        w = dw_weight if cdt is None else dw_weight.to(cdt)
        mask = [any(need[:3]), need[4], dw_bias is not None and need[5]]
        du, dw, db = convolution_backward(grad.to(w.dtype), u.to(w.dtype), w, dw_bias is not None, [1],
                                          [dw_weight.shape[-1] // 2], dw_weight.shape[0], *mask)
        grads = [None] * 3
        if mask[0]:
            du = du.to(u.dtype)
            if padding_mask is not None:
                du = du.masked_fill(padding_mask.unsqueeze(1).expand_as(du), 0.0)
            du = du.permute(2, 0, 1)
            dx = du * sig
            ds = torch.ops.aten.sigmoid_backward(du * x, sig)
            if ctx.balancer_config is not None:
                ds = balancer_gradient(s, ds, ctx.balancer_config)
            dsrc, dwi, dbi = linear_grads(torch.cat((dx, ds), dim=-1), src_c, in_w, in_bias, need[0], need[1], need[2])
            grads = [None if dsrc is None else dsrc.to(src.dtype), None if dwi is None else dwi.to(in_weight.dtype),
                     dbi]
        return (*grads, None, dw.to(dw_weight.dtype) if mask[1] else None,
                db.to(dw_bias.dtype) if mask[2] else None, None, None)


def _linear_glu_fake(src: Tensor, in_weight: Tensor, in_bias: Optional[Tensor], padding_mask: Optional[Tensor]
                     ) -> Tensor:
    return src.new_empty(tuple(src.shape[:-1]) + (in_weight.shape[0] // 2,), dtype=in_weight.dtype)


def _linear_glu_impl(src: Tensor, in_weight: Tensor, in_bias: Optional[Tensor], padding_mask: Optional[Tensor]
                     ) -> Tensor:
    """mask(x * sigmoid(s)), (x, s) = linear(src).chunk(2): (T, B, D) in in_weight's dtype."""
    T, B, _ = src.shape
    x2 = contiguous_rows(src)
    u = torch.empty((x2.shape[0], in_weight.shape[0] // 2), dtype=in_weight.dtype, device=src.device)
    pad = None
    if padding_mask is not None:
        pad = padding_mask.contiguous().view(torch.uint8)
    kernels("linear_glu").forward(x2, in_weight.contiguous(), in_bias, pad, u, B, T)
    return u.view(T, B, -1)


_linear_glu = FusedOp("linear_glu_fwd", _linear_glu_impl, _linear_glu_fake)


def _inference_fused(src: Tensor, in_weight: Tensor, in_bias: Optional[Tensor], padding_mask: Optional[Tensor],
                     dw_weight: Tensor, dw_bias: Optional[Tensor]) -> Tensor:
    w = gemm_weight(src, in_weight, "gated_depthwise_conv1d")
    b = in_bias if in_bias is None or in_bias.dtype == w.dtype else in_bias.to(w.dtype)
    u = _linear_glu(src, w, b, padding_mask).permute(1, 2, 0)
    return F.conv1d(u, dw_weight, dw_bias, 1, dw_weight.shape[-1] // 2, 1, dw_weight.shape[0])


def gated_depthwise_conv1d(src: Tensor, in_weight: Tensor, in_bias: Optional[Tensor], padding_mask: Optional[Tensor],
                           dw_weight: Tensor, dw_bias: Optional[Tensor],
                           balancer_config: Optional[BalancerConfig] = None) -> Tensor:
    """See the module docstring; src (T, B, C) -> (B, D, T)."""
    D = in_weight.shape[0] // 2
    if (dw_weight.dim() != 3 or dw_weight.shape[1] != 1 or dw_weight.shape[-1] % 2 != 1 or dw_weight.shape[0] != D
            or in_weight.shape[0] != 2 * D):
        raise ValueError(f"gated_depthwise_conv1d: in_proj weight {tuple(in_weight.shape)} and depthwise weight "
                         f"{tuple(dw_weight.shape)} do not form a (2D, C) projection and a (D, 1, odd K) kernel")
    params = (src, in_weight, in_bias, dw_weight, dw_bias)
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in params)
    if (needs_grad and src.dim() == 3 and src.numel() > 0 and use_triton_for(src, in_weight, dw_weight)
            and function_may_launch()):
        cdt = compute_dtype(src) if autocast_enabled(src) else None
        return _GatedDepthwiseConv1d.apply(src, in_weight, in_bias, padding_mask, dw_weight, dw_bias,
                                           balancer_config, cdt)
    if (not needs_grad and balancer_config is None and src.dim() == 3 and src.numel() > 0
            and (padding_mask is None or (padding_mask.dtype == torch.bool
                                          and padding_mask.shape == (src.shape[1], src.shape[0])))
            and use_triton_for(src, in_weight, dw_weight)):
        return _inference_fused(src, in_weight, in_bias, padding_mask, dw_weight, dw_bias)
    return gated_depthwise_conv1d_reference(src, in_weight, in_bias, padding_mask, dw_weight, dw_bias,
                                            balancer_config)
