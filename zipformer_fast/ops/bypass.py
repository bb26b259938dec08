"""Bypass combiner (icefall BypassModule): out = x_orig + (x - x_orig) * c, and its fusion with
SimpleUpsample for DownsampledZipformer2Encoder's out_combiner.

`scale` c is (D,) or (B, D) (the latter when per-sequence layer-skipping zeroed some rows); x and
x_orig are (T, B, D). The clamping of c (limit_param_value) and the skip mask are applied by the
module; the op is the elementwise combination. Output dtype follows torch promotion of
(x_orig, x, scale), as the reference does (fp16 activations with an fp32 scale give fp32).

- bypass(x_orig, x, scale)
- upsample_bypass(x_orig, y_down, ds, scale) == bypass(x_orig, simple_upsample(y_down, ds, T), scale)
  without materialising the upsampled (T, B, D) tensor (forward reads y_down once per group of ds
  frames; backward sums the group's gradient in registers).
- bias_norm_bypass (BiasNorm then bypass, the end of a layer) lives in ops/bias_norm_bypass.py.

Fused path (kernels/bypass.py; autograd.Functions calling the launchers in eager mode, the custom
ops zipformer_fast::bypass_fwd/bwd under torch.compile): one read of each input and one write of out. Saved for backward:
x_orig and x (or y_down) themselves, no new tensor (the reference autograd saves the difference
x - x_orig, a new (T, B, D) tensor, plus the upsampled copy). Inputs need a unit channel stride
(T and B strides are free, so a channel-truncation view is not copied); others are copied.
Any other scale shape falls back to the reference.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._registry import (
    FUNCTION, LAUNCH, REFERENCE, FusedOp, backward_once, eager_apply, empty_out, kernels, register_autograd, route,
    unit_channel_stride,
)
from .downsample import simple_upsample_reference


def bypass_reference(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    return x_orig + (x - x_orig) * scale


def upsample_bypass_reference(x_orig: Tensor, y_down: Tensor, ds: int, scale: Tensor) -> Tensor:
    return bypass_reference(x_orig, simple_upsample_reference(y_down, ds, x_orig.shape[0]), scale)


def _promoted_dtype(a: Tensor, b: Tensor, c: Tensor) -> Optional[torch.dtype]:
    """The output dtype when it differs from a's (torch promotion of the three), else None: the
    common case, answered without promote_types and allocated without a dtype keyword."""
    d = a.dtype
    if b.dtype == d and c.dtype == d:
        return None
    return torch.promote_types(torch.promote_types(d, b.dtype), c.dtype)


def _scale_len(scale: Tensor, B: int, C: int) -> Optional[int]:
    """Entries of the scale as the kernels index it (C or B*C), or None if unsupported."""
    shape = scale.shape
    if not 1 <= len(shape) <= 3 or shape[-1] != C:
        return None
    n = scale.numel()
    if n == C:  # (C,), (1, C), (1, 1, C)
        return C
    if n == B * C and shape[-2] == B and (len(shape) == 2 or shape[0] == 1):  # (B, C), (1, B, C)
        return B * C
    return None


def shapes_ok(shape, y_shape, scale: Tensor) -> bool:
    """x_orig's shape (T, B, C) with T * B * C > 0, y (any frames, B, C) and a scale the kernels
    index. Shapes are passed in, not re-read (host time)."""
    if len(shape) != 3 or len(y_shape) != 3:
        return False
    T, B, C = shape
    if T * B * C == 0 or y_shape[1] != B or y_shape[2] != C:
        return False
    s = scale.shape
    n = len(s)
    # the common (C,) and per-sequence (B, C) scales without _scale_len's numel() (per-sequence
    # 0.94 -> 0.65 us)
    if n == 1:
        return s[0] == C
    if n == 2 and s[0] == B and s[1] == C:
        return True
    return _scale_len(scale, B, C) is not None


def _fake(x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    return torch.empty(x_orig.shape, dtype=_promoted_dtype(x_orig, y, scale) or x_orig.dtype, device=x_orig.device)


def _dense(scale: Tensor) -> Tensor:
    """The scale as the kernels read it: its numel() entries in order (no reshape: host time)."""
    return scale if scale.is_contiguous() else scale.contiguous()


def _bypass_fwd_impl(x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    """ds == 0: plain bypass (y is (T, B, D)); ds >= 1: y is (ceil(T/ds), B, D), upsampled."""
    T, B, C = x_orig.shape
    xo, sxo = unit_channel_stride(x_orig)
    yy, sy = unit_channel_stride(y)
    out = empty_out(x_orig, _promoted_dtype(x_orig, y, scale))
    if ds == 0:
        kernels("bypass").forward(xo, yy, _dense(scale), out, T, B, C, sxo, sy)
    else:
        kernels("bypass").upsample_forward(xo, yy, _dense(scale), out, ds, T, B, C, sxo, sy)
    return out


def _bwd_fake(grad: Tensor, x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tuple[Tensor, Tensor, Tensor]:
    return (torch.empty(x_orig.shape, dtype=x_orig.dtype, device=x_orig.device),
            torch.empty(y.shape, dtype=y.dtype, device=y.device), torch.empty_like(scale))


def _bypass_bwd_impl(grad: Tensor, x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tuple[Tensor, Tensor, Tensor]:
    T, B, C = x_orig.shape
    xo, sxo = unit_channel_stride(x_orig)
    yy, sy = unit_channel_stride(y)
    g = grad if grad.is_contiguous() else grad.contiguous()
    dxo, dy = empty_out(x_orig), empty_out(y)
    dc = torch.empty_like(scale, memory_format=torch.contiguous_format)
    if ds == 0:
        kernels("bypass").backward(g, xo, yy, _dense(scale), dxo, dy, dc, T, B, C, sxo, sy)
    else:
        kernels("bypass").upsample_backward(g, xo, yy, _dense(scale), dxo, dy, ds, dc, T, B, C, sxo, sy)
    return dxo, dy, dc


_bypass_fwd = FusedOp("bypass_fwd", _bypass_fwd_impl, _fake)
_bypass_bwd = FusedOp("bypass_bwd", _bypass_bwd_impl, _bwd_fake)


def _setup(ctx, inputs, output):
    x_orig, y, scale, ds = inputs
    ctx.ds = ds
    ctx.save_for_backward(x_orig, y, scale)


def _backward(ctx, grad):
    x_orig, y, scale = ctx.saved_tensors
    dxo, dy, dc = _bypass_bwd.op(grad, x_orig, y, scale, ctx.ds)
    return dxo, dy, dc, None


register_autograd(_bypass_fwd.op, _backward, _setup)


class _BypassFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensors."""

    @staticmethod
    def forward(ctx, x_orig, y, scale, ds):
        ctx.ds = ds
        ctx.save_for_backward(x_orig, y, scale)
        return _bypass_fwd_impl(x_orig, y, scale, ds)

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        x_orig, y, scale = ctx.saved_tensors
        return (*_bypass_bwd_impl(grad, x_orig, y, scale, ctx.ds), None)


_apply_bypass = eager_apply(_BypassFused)


def _bypass_call(path: int, x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    if path == FUNCTION:
        return _apply_bypass(x_orig, y, scale, ds)
    if path == LAUNCH:
        return _bypass_fwd_impl(x_orig, y, scale, ds)
    return _bypass_fwd.op(x_orig, y, scale, ds)


def bypass(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    shape = x_orig.shape
    x_shape = x.shape
    if shapes_ok(shape, x_shape, scale) and x_shape[0] == shape[0]:
        path = route(x_orig, x, scale)
        if path != REFERENCE:
            return _bypass_call(path, x_orig, x, scale, 0)
    return bypass_reference(x_orig, x, scale)


def upsample_bypass(x_orig: Tensor, y_down: Tensor, ds: int, scale: Tensor) -> Tensor:
    """out_combiner(x_orig, simple_upsample(y_down, ds, T)) with T = x_orig.shape[0]."""
    shape = x_orig.shape
    y_shape = y_down.shape
    if y_shape[0] * ds < shape[0]:
        raise ValueError(f"upsample_bypass: {y_shape[0]} frames x ds={ds} cannot cover T={shape[0]}")
    if ds >= 1 and shapes_ok(shape, y_shape, scale):
        path = route(x_orig, y_down, scale)
        if path != REFERENCE:
            return _bypass_call(path, x_orig, y_down, scale, int(ds))
    return upsample_bypass_reference(x_orig, y_down, ds, scale)
