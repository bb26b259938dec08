"""The end of a Zipformer layer (icefall Zipformer2EncoderLayer: `src = self.norm(src)`, then
`src = self.bypass(src_orig, src)`) as one op:

    bias_norm_bypass(x_orig, x, log_scale, bias, scale) == bypass(x_orig, bias_norm(x, log_scale, bias), scale)

x_orig and x are (T, B, D); scale is (D,) or (B, D) (per-sequence layer skipping, every training
step), as for `bypass`. Output dtype: torch promotion of (x_orig, x, scale), with the normalised
tensor rounded to x's dtype first, as the two ops store it.

Fused path (kernels/bias_norm_bypass.py; an autograd.Function in eager mode, the custom ops
zipformer_fast::bias_norm_bypass_fwd/bwd under torch.compile): forward reads x and x_orig once and
writes the output, the normalised tensor is never stored; backward recomputes it in registers and
writes dx and dx_orig in one pass (plus two small folds of the parameter-gradient partials).
Saved for backward: the inputs and parameters only (the two-op composition would save the
normalised tensor or write and read it again). Inputs need a unit channel stride (T and B strides
are free; others are copied). Other shapes, or rows wider than BiasNorm's fused limit, run the two
ops.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._registry import (
    CUSTOM_OP, FUNCTION, LAUNCH, REFERENCE, FusedOp, backward_once, eager_apply, empty_out, kernels, register_autograd,
    route, unit_channel_stride,
)
from .bias_norm import MAX_FUSED_DIM, bias_norm, bias_norm_reference
from .bypass import _dense, shapes_ok as bypass_shapes_ok, _promoted_dtype, bypass, bypass_reference


def bias_norm_bypass_reference(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    return bypass_reference(x_orig, bias_norm_reference(x, log_scale, bias), scale)


def _c_sb(scale: Tensor, D: int) -> int:
    """Stride between the scale's per-sequence rows as the kernels read it (0: one row for all)."""
    if scale.dim() == 1:  # (D,), without numel() (host time)
        return 0
    return 0 if scale.numel() == D else D


def _fwd_fake(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    return torch.empty(x_orig.shape, dtype=_promoted_dtype(x_orig, x, scale) or x_orig.dtype, device=x_orig.device)


def _fwd_impl(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    T, B, D = x.shape
    xo, sxo = unit_channel_stride(x_orig)
    xx, sx = unit_channel_stride(x)
    out = empty_out(x_orig, _promoted_dtype(x_orig, x, scale))
    kernels("bias_norm_bypass").forward(xo, xx, _dense(bias), log_scale, _dense(scale), _c_sb(scale, D), out,
                                        T, B, D, sxo, sx)
    return out


def _bwd_fake(grad: Tensor, x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor,
              scale: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty(x_orig.shape, dtype=x_orig.dtype, device=x_orig.device),
            torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(log_scale),
            torch.empty_like(bias), torch.empty_like(scale))


def _bwd_impl(grad: Tensor, x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor,
              scale: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B, D = x.shape
    xo, sxo = unit_channel_stride(x_orig)
    xx, sx = unit_channel_stride(x)
    dxo, dx = empty_out(x_orig), empty_out(x)
    dls = torch.empty_like(log_scale, memory_format=torch.contiguous_format)
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format)
    dscale = torch.empty_like(scale, memory_format=torch.contiguous_format)
    kernels("bias_norm_bypass").backward(grad if grad.is_contiguous() else grad.contiguous(), xo, xx, _dense(bias),
                                         log_scale, _dense(scale), _c_sb(scale, D), dxo, dx, dscale, dbias, dls,
                                         T, B, D, sxo, sx)
    return dxo, dx, dls, dbias, dscale


_bias_norm_bypass_fwd = FusedOp("bias_norm_bypass_fwd", _fwd_impl, _fwd_fake)
_bias_norm_bypass_bwd = FusedOp("bias_norm_bypass_bwd", _bwd_impl, _bwd_fake)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    return _bias_norm_bypass_bwd.op(grad, *ctx.saved_tensors)


register_autograd(_bias_norm_bypass_fwd.op, _backward, _setup)


class _BiasNormBypassFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensors."""

    @staticmethod
    def forward(ctx, x_orig, x, log_scale, bias, scale):
        ctx.save_for_backward(x_orig, x, log_scale, bias, scale)
        return _fwd_impl(x_orig, x, log_scale, bias, scale)

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        return _bwd_impl(grad, *ctx.saved_tensors)


_apply_bias_norm_bypass = eager_apply(_BiasNormBypassFused)


def bias_norm_bypass(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """x_orig + (bias_norm(x, log_scale, bias) - x_orig) * scale; see the module docstring."""
    shape = x_orig.shape
    x_shape = x.shape
    path = REFERENCE
    if bypass_shapes_ok(shape, x_shape, scale) and x_shape[0] == shape[0] and shape[2] <= MAX_FUSED_DIM:
        path = route(x_orig, x, log_scale, bias, scale)
    if path == FUNCTION:
        return _apply_bias_norm_bypass(x_orig, x, log_scale, bias, scale)
    if path == LAUNCH:
        return _fwd_impl(x_orig, x, log_scale, bias, scale)
    if path == CUSTOM_OP:
        return _bias_norm_bypass_fwd.op(x_orig, x, log_scale, bias, scale)
    return bypass(x_orig, bias_norm(x, log_scale, bias), scale)
