"""SimpleDownsample / SimpleUpsample between Zipformer stacks, and channel truncation/padding.

- simple_downsample(x (T,B,C), bias (ds,)): right-pad T to a multiple of ds by repeating the last
  frame of the padded batch tensor, then a softmax(bias)-weighted sum over each group of ds frames
  -> (ceil(T/ds), B, C).
- simple_upsample(x (T',B,C), ds, T): repeat every frame ds times, keep the first T.
- convert_num_channels(x, D): keep the first D channels, or append zeros up to D.

Fused path for simple_downsample (kernels/downsample.py; an autograd.Function in eager mode, the
custom op zipformer_fast::downsample_fwd under torch.compile):
one read of x, one write of the (ceil(T/ds), B, C) output; the padding is never materialised
(frame indices are clamped to T-1); softmax(bias) and its Jacobian are computed inside the
kernels (ds <= 8 numbers per program). Saved for backward: x and the (ds,) bias only (the reference
saves the padded copy of x). Output dtype = promotion of (x, bias), as the reference's
`x * softmax(bias)`. x needs a unit channel stride; a truncation view x[..., :D] (what
convert_num_channels returns when narrowing) is read in place, without a copy. ds must be a
power of two (1, 2, 4, 8: all Zipformer uses); other values run the reference.

The upsample half is fused with the out_combiner: see `upsample_bypass` in ops/bypass.py.
convert_num_channels stays the reference: narrowing is a view; widening is one write of the
wider tensor (torch.cat), which a kernel could not beat.
"""
from typing import Tuple

import torch
from torch import Tensor

from ._registry import (
    CUSTOM_OP, FUNCTION, LAUNCH, REFERENCE, FusedOp, backward_once, eager_apply, empty_out, kernels, register_autograd,
    route, unit_channel_stride,
)


def simple_downsample_reference(x: Tensor, bias: Tensor) -> Tensor:
    ds = bias.shape[0]
    T, B, C = x.shape
    d_T = (T + ds - 1) // ds
    pad = d_T * ds - T
    if torch.compiler.is_compiling():
        # Repeat the last frame by index, for every length alike: a branch on pad (or an expand to
        # pad frames, which dynamic shapes specialise at 0 and 1) would recompile per T mod ds.
        x = x.index_select(0, torch.arange(d_T * ds, device=x.device).clamp(max=T - 1))
    elif pad > 0 or torch.jit.is_tracing():  # traced (ONNX export): pad depends on the input length
        x = torch.cat((x, x[-1:].expand(pad, B, C)), dim=0)
    weights = bias.softmax(dim=0).unsqueeze(-1).unsqueeze(-1)  # (ds, 1, 1)
    return (x.reshape(d_T, ds, B, C) * weights).sum(dim=1)


def simple_upsample_reference(x: Tensor, ds: int, length: int) -> Tensor:
    Td, B, C = x.shape
    return x.unsqueeze(1).expand(Td, ds, B, C).reshape(Td * ds, B, C)[:length]


def convert_num_channels_reference(x: Tensor, num_channels: int) -> Tensor:
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    shape = list(x.shape)
    shape[-1] = num_channels - shape[-1]
    return torch.cat((x, torch.zeros(shape, dtype=x.dtype, device=x.device)), dim=-1)


def _fwd_fake(x: Tensor, bias: Tensor) -> Tensor:
    ds = bias.shape[0]
    return torch.empty(((x.shape[0] + ds - 1) // ds,) + tuple(x.shape[1:]),
                       dtype=torch.promote_types(x.dtype, bias.dtype), device=x.device)


def _downsample_fwd_impl(x: Tensor, bias: Tensor) -> Tensor:
    ds = bias.shape[0]
    T, B, C = x.shape
    xx, sx = unit_channel_stride(x)
    dt = x.dtype if bias.dtype == x.dtype else torch.promote_types(x.dtype, bias.dtype)
    Tg = (T + ds - 1) // ds
    out = x.new_empty((Tg, B, C), dtype=dt)
    kernels("downsample").forward(xx, bias, out, ds, T, Tg, B, C, sx)
    return out


def _bwd_fake(grad: Tensor, x: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), torch.empty_like(bias)


def _downsample_bwd_impl(grad: Tensor, x: Tensor, bias: Tensor) -> Tuple[Tensor, Tensor]:
    ds = bias.shape[0]
    T, B, C = x.shape
    xx, sx = unit_channel_stride(x)
    dx = empty_out(x)
    dbias = torch.empty_like(bias, memory_format=torch.contiguous_format)
    kernels("downsample").backward(grad if grad.is_contiguous() else grad.contiguous(), xx, bias, dx, dbias,
                                   ds, T, grad.shape[0], B, C, sx)
    return dx, dbias


_downsample_fwd = FusedOp("downsample_fwd", _downsample_fwd_impl, _fwd_fake)
_downsample_bwd = FusedOp("downsample_bwd", _downsample_bwd_impl, _bwd_fake)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    x, bias = ctx.saved_tensors
    return _downsample_bwd.op(grad, x, bias)


register_autograd(_downsample_fwd.op, _backward, _setup)


class _DownsampleFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensors."""

    @staticmethod
    def forward(ctx, x, bias):
        ctx.save_for_backward(x, bias)
        return _downsample_fwd_impl(x, bias)

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        return _downsample_bwd_impl(grad, *ctx.saved_tensors)


_apply_downsample = eager_apply(_DownsampleFused)


def simple_downsample(x: Tensor, bias: Tensor) -> Tensor:
    ds = bias.shape[0]
    shape = x.shape
    path = REFERENCE
    if len(shape) == 3 and shape[0] * shape[1] * shape[2] > 0 and ds & (ds - 1) == 0:
        path = route(x, bias)
    if path == FUNCTION:
        return _apply_downsample(x, bias)
    if path == LAUNCH:
        return _downsample_fwd_impl(x, bias)
    if path == CUSTOM_OP:
        return _downsample_fwd.op(x, bias)
    return simple_downsample_reference(x, bias)


def simple_upsample(x: Tensor, ds: int, length: int) -> Tensor:
    return simple_upsample_reference(x, ds, length)


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    return convert_num_channels_reference(x, num_channels)
