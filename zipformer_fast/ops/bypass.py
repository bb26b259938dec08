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
- bias_norm_bypass(x_orig, x, log_scale, bias, scale) == bypass(x_orig, bias_norm(x, log_scale, bias), scale)
  (the end of a Zipformer layer). Fused path: an autograd.Function around the two fused ops that
  saves x, x_orig and the parameters but not the normalised y (nor the per-row rstd): backward
  runs the BiasNorm forward kernel again (bit-identical y and rstd), then the bypass and BiasNorm
  backward kernels, so the gradients equal the two fused ops'. Saves one (T, B, D) tensor per layer
  for one extra BiasNorm pass in backward.

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

from ..backend import use_triton_for
from ._registry import FusedOp, apply, as_tbc, function_may_launch, kernels, needs_grad, register_autograd, use_op
from .downsample import simple_upsample_reference


def bypass_reference(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    return x_orig + (x - x_orig) * scale


def upsample_bypass_reference(x_orig: Tensor, y_down: Tensor, ds: int, scale: Tensor) -> Tensor:
    return bypass_reference(x_orig, simple_upsample_reference(y_down, ds, x_orig.shape[0]), scale)


def _out_dtype(a: Tensor, b: Tensor, c: Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(a.dtype, b.dtype), c.dtype)


def _scale_len(scale: Tensor, B: int, C: int) -> Optional[int]:
    """Entries of the scale as the kernels index it (C or B*C), or None if unsupported."""
    shape = tuple(scale.shape)
    if shape in ((C,), (1, C), (1, 1, C)):
        return C
    if shape in ((B, C), (1, B, C)):
        return B * C
    return None


def _fused_ok(x_orig: Tensor, y: Tensor, scale: Tensor) -> bool:
    return (x_orig.dim() == 3 and y.dim() == 3 and x_orig.shape[1:] == y.shape[1:] and x_orig.numel() > 0
            and _scale_len(scale, x_orig.shape[1], x_orig.shape[2]) is not None
            and use_triton_for(x_orig, y, scale))


def _fake(x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    return torch.empty(x_orig.shape, dtype=_out_dtype(x_orig, y, scale), device=x_orig.device)


def _flat(scale: Tensor) -> Tensor:
    return scale.reshape(-1) if scale.is_contiguous() else scale.reshape(-1).contiguous()


def _bypass_fwd_impl(x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    """ds == 0: plain bypass (y is (T, B, D)); ds >= 1: y is (ceil(T/ds), B, D), upsampled."""
    xo, yy = as_tbc(x_orig), as_tbc(y)
    out = torch.empty(xo.shape, dtype=_out_dtype(x_orig, y, scale), device=x_orig.device)
    k = kernels("bypass")
    if ds == 0:
        k.forward(xo, yy, _flat(scale), out)
    else:
        k.upsample_forward(xo, yy, _flat(scale), out, ds)
    return out


def _bwd_fake(grad: Tensor, x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tuple[Tensor, Tensor, Tensor]:
    return (torch.empty(x_orig.shape, dtype=x_orig.dtype, device=x_orig.device),
            torch.empty(y.shape, dtype=y.dtype, device=y.device), torch.empty_like(scale))


def _bypass_bwd_impl(grad: Tensor, x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tuple[Tensor, Tensor, Tensor]:
    xo, yy = as_tbc(x_orig), as_tbc(y)
    g = grad if grad.is_contiguous() else grad.contiguous()
    dxo = torch.empty(xo.shape, dtype=x_orig.dtype, device=x_orig.device)
    dy = torch.empty(yy.shape, dtype=y.dtype, device=y.device)
    k = kernels("bypass")
    if ds == 0:
        dc = k.backward(g, xo, yy, _flat(scale), dxo, dy, scale.dtype)
    else:
        dc = k.upsample_backward(g, xo, yy, _flat(scale), dxo, dy, ds, scale.dtype)
    return dxo, dy, dc.view(scale.shape)


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
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x_orig, y, scale = ctx.saved_tensors
        return (*_bypass_bwd_impl(grad, x_orig, y, scale, ctx.ds), None)


def _bypass_call(x_orig: Tensor, y: Tensor, scale: Tensor, ds: int) -> Tensor:
    if use_op(x_orig):
        return _bypass_fwd.op(x_orig, y, scale, ds)
    if needs_grad(x_orig, y, scale):
        return apply(_BypassFused, x_orig, y, scale, ds)
    return _bypass_fwd_impl(x_orig, y, scale, ds)


def bypass(x_orig: Tensor, x: Tensor, scale: Tensor) -> Tensor:
    if x_orig.shape == x.shape and _fused_ok(x_orig, x, scale):
        return _bypass_call(x_orig, x, scale, 0)
    return bypass_reference(x_orig, x, scale)


def upsample_bypass(x_orig: Tensor, y_down: Tensor, ds: int, scale: Tensor) -> Tensor:
    """out_combiner(x_orig, simple_upsample(y_down, ds, T)) with T = x_orig.shape[0]."""
    T = x_orig.shape[0]
    if y_down.shape[0] * ds < T:
        raise ValueError(f"upsample_bypass: {y_down.shape[0]} frames x ds={ds} cannot cover T={T}")
    if ds >= 1 and _fused_ok(x_orig, y_down, scale):
        return _bypass_call(x_orig, y_down, scale, int(ds))
    return upsample_bypass_reference(x_orig, y_down, ds, scale)


def bias_norm_bypass_reference(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    from .bias_norm import bias_norm_reference
    return bypass_reference(x_orig, bias_norm_reference(x, log_scale, bias), scale)


class _BiasNormBypass(torch.autograd.Function):
    """Calls the launchers through their FusedOps: plain calls in eager mode, the custom ops
    while dynamo traces this Function."""

    @staticmethod
    def forward(ctx, x_orig, x, log_scale, bias, scale):
        from .bias_norm import _bias_norm_fwd
        y = _bias_norm_fwd(x, log_scale, bias)[0]
        ctx.save_for_backward(x_orig, x, log_scale, bias, scale)
        return _bypass_fwd(x_orig, y, scale, 0)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        from .bias_norm import _bias_norm_bwd, _bias_norm_fwd
        x_orig, x, log_scale, bias, scale = ctx.saved_tensors
        y, rstd = _bias_norm_fwd(x, log_scale, bias)
        dxo, dy, dc = _bypass_bwd(grad, x_orig, y, scale, 0)
        dx, dls, db = _bias_norm_bwd(dy, x, log_scale, bias, rstd)
        return dxo, dx, dls, db, dc


def bias_norm_bypass(x_orig: Tensor, x: Tensor, log_scale: Tensor, bias: Tensor, scale: Tensor) -> Tensor:
    """x_orig + (bias_norm(x, log_scale, bias) - x_orig) * scale; see the module docstring."""
    from .bias_norm import _bias_norm_fwd_impl, bias_norm, fused_ok
    if x_orig.shape == x.shape and fused_ok(x, log_scale, bias) and _fused_ok(x_orig, x, scale):
        if not function_may_launch():
            return bypass(x_orig, bias_norm(x, log_scale, bias), scale)
        if use_op(x_orig) or needs_grad(x_orig, x, log_scale, bias, scale):
            return apply(_BiasNormBypass, x_orig, x, log_scale, bias, scale)
        return _bypass_fwd_impl(x_orig, _bias_norm_fwd_impl(x, log_scale, bias)[0], scale, 0)
    return bypass(x_orig, bias_norm(x, log_scale, bias), scale)
