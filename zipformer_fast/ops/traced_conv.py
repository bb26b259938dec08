"""Convolutions whose gradient is one opaque node in a compiled training graph.

    conv(x, weight, bias, stride, padding, groups)       F.conv1d / F.conv2d (by weight.dim())
    convolution_backward(grad, x, weight, has_bias, stride, padding, groups, need_x, need_w, need_b)
        -> (dx, dw, db): aten.convolution_backward (what autograd's ConvolutionBackward runs),
           dilation 1, not transposed; an entry that is not needed is None.

Why: inductor's lowering of aten.convolution_backward (torch 2.13, _inductor/kernel/conv.py,
convolution_backward_lowering) turns the input gradient's strides into ints (guard_int_seq) to
order its operands, which pins the time axis of a dynamic-shape training graph: every new
utterance length recompiles it until dynamo's recompile limit. While tracing, `conv` records an
autograd.Function whose backward calls the custom op zipformer_fast::convolution_backward, which
inductor runs as an extern call (it would call aten's convolution_backward for these shapes
anyway) without looking at the strides. The forward convolution is the plain aten op either way.

Eager calls (and traced calls that need no gradient) are F.conv1d / F.conv2d themselves; eager
convolution_backward calls aten directly. Same numbers on every path.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

from ._registry import FusedOp, autocast_enabled, compute_dtype, is_compiling, use_op


def _aten(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: List[int], padding: List[int],
          groups: int, need_x: bool, need_w: bool, need_b: bool):
    """aten.convolution_backward, dilation 1, not transposed; a gradient not needed is None."""
    nd = weight.dim() - 2
    return torch.ops.aten.convolution_backward(
        grad, x, weight, [weight.shape[0]] if has_bias else None, stride, padding, [1] * nd, False, [0] * nd,
        groups, [need_x, need_w, need_b])


def _aten_conv_backward(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: List[int],
                        padding: List[int], groups: int, need_x: bool, need_w: bool,
                        need_b: bool) -> Tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _aten(grad, x, weight, has_bias, stride, padding, groups, need_x, need_w, need_b)
    # Custom-op outputs are new, contiguous tensors (the fake impl's promise); the not-needed ones empty.
    return (dx.contiguous() if need_x else x.new_empty((0,)),
            dw.contiguous() if need_w else weight.new_empty((0,)),
            db if need_b else weight.new_empty((0,)))


def _conv_backward_fake(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: List[int],
                        padding: List[int], groups: int, need_x: bool, need_w: bool,
                        need_b: bool) -> Tuple[Tensor, Tensor, Tensor]:
    return (x.new_empty(x.shape if need_x else (0,)),
            weight.new_empty(weight.shape if need_w else (0,)),
            weight.new_empty((weight.shape[0],) if need_b else (0,), dtype=grad.dtype))


_conv_backward_op = FusedOp("convolution_backward", _aten_conv_backward, _conv_backward_fake)


def convolution_backward(grad: Tensor, x: Tensor, weight: Tensor, has_bias: bool, stride: Sequence[int],
                         padding: Sequence[int], groups: int, need_x: bool, need_w: bool, need_b: bool
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """See the module docstring; grad, x and weight share a dtype (the one the forward ran in)."""
    if not use_op(x):  # eager: aten itself (no empty placeholders, no contiguity copies to promise)
        return _aten(grad, x, weight, has_bias, list(stride), list(padding), groups, bool(need_x), bool(need_w),
                     bool(need_b))
    dx, dw, db = _conv_backward_op.op(grad, x, weight, bool(has_bias), list(stride), list(padding), int(groups),
                                      bool(need_x), bool(need_w), bool(need_b))
    return (dx if need_x else None), (dw if need_w else None), (db if need_b else None)


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


def _conv_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, groups: int) -> Tensor:
    if weight.dim() == 3:
        return F.conv1d(x, weight, bias, stride, padding, 1, groups)
    return F.conv2d(x, weight, bias, stride, padding, 1, groups)


class _TracedConv(torch.autograd.Function):
    """conv with its gradient through convolution_backward. Under autocast the forward's conv is
    autocast as F.conv* would be; backward casts the saved operands the same way (cdt) and returns
    each gradient in its input's dtype. Saved: x and the parameters, what ConvolutionBackward saves."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups, cdt):
        ctx.conv = (tuple(stride), tuple(padding), groups, cdt)
        ctx.save_for_backward(x, weight, bias)
        return _conv_forward(x, weight, bias, stride, padding, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, bias = ctx.saved_tensors
        stride, padding, groups, cdt = ctx.conv
        need = ctx.needs_input_grad
        wc = _cast(weight, cdt)
        dx, dw, db = convolution_backward(_cast(grad, wc.dtype), _cast(x, wc.dtype), wc, bias is not None,
                                          stride, padding, groups, need[0], need[1], bias is not None and need[2])
        return (None if dx is None else dx.to(x.dtype), None if dw is None else dw.to(weight.dtype),
                None if db is None else db.to(bias.dtype), None, None, None, None)


def conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride=1, padding=0, groups: int = 1) -> Tensor:
    """F.conv1d / F.conv2d (dilation 1); while tracing a call that needs a gradient, the same conv
    with its backward as one opaque node (see the module docstring). stride / padding: an int or
    one per spatial dim."""
    if (is_compiling() and torch.is_grad_enabled()
            and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad))):
        nd = weight.dim() - 2
        stride = [stride] * nd if isinstance(stride, int) else list(stride)
        padding = [padding] * nd if isinstance(padding, int) else list(padding)
        cdt = compute_dtype(x) if autocast_enabled(x) else None
        return _TracedConv.apply(x, weight, bias, stride, padding, groups, cdt)
    return _conv_forward(x, weight, bias, stride, padding, groups)
