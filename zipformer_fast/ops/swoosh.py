"""SwooshL / SwooshR activations (paper eq. 5; icefall scaling.py, k2 swoosh).

    SwooshL(x) = softplus(x - 4) - 0.08 x - 0.035
    SwooshR(x) = softplus(x - 1) - 0.08 x - 0.313261687      (log(1 + e^-1), so SwooshR(0) = 0)
    derivative  = sigmoid(x - shift) - 0.08                    in (-0.08, 0.92)

Computed in fp32 whatever the input dtype; where log(1 + e^z) overflows to inf, z itself is used
(icefall's SwooshLForward). Output dtype = input dtype.

Two ways to keep what backward needs:
- exact (default): save x (x's dtype, 2 or 4 bytes/element), recompute sigmoid in backward.
- compact_derivative=True (k2's trick, used by icefall's standalone SwooshL/R modules): save one
  uint8 per element, byte = floor(g*255/1.005 + u), g = sigmoid(x - shift), u ~ U[0,1);
  backward decodes byte*1.005/255 - 0.08. Stochastic rounding: unbiased, error < 1.005/255.

Paths: reference = plain autograd of the formula (saves x and intermediates), or, for the compact
mode, a small autograd.Function doing the same quantisation in torch. Fused = kernels/swoosh.py
(one read of x, one write of y [+ 1 byte]): an autograd.Function calling the launcher in eager
mode, the custom op zipformer_fast::swoosh_fwd while torch.compile traces (ops/_registry.py);
non-contiguous inputs are copied to contiguous first.
"""
import threading
from typing import Optional, Tuple

import torch
from torch import Tensor

from ._registry import (
    CUSTOM_OP, FUNCTION, LAUNCH, FusedOp, backward_once, eager_apply, empty_out, kernels, register_autograd, route,
)

_functorch_active = torch._C._are_functorch_transforms_active

SWOOSH_L_SHIFT, SWOOSH_L_OFFSET = 4.0, 0.035
SWOOSH_R_SHIFT, SWOOSH_R_OFFSET = 1.0, 0.313261687
COMPACT_SCALE = 1.005 / 255.0  # decoded derivative = byte * COMPACT_SCALE - 0.08
COMPACT_FLOOR = -0.08


# ---------------------------------------------------------------------------------- reference
def swoosh_reference(x: Tensor, shift: float, offset: float) -> Tensor:
    xf = x.float()
    # softplus(z) = log1p(exp(z)) below its threshold (20) and z above it, where the two agree to
    # within exp(-20) relative, far below a float32 ulp: the same values as icefall's
    # logaddexp(0, z) with its overflow-to-z rule, and a finite gradient sigmoid(z) everywhere. One
    # fused op (and one in backward) instead of exp/isinf/where/log1p: the synthetic recipe's CPU
    # training step went from 0.64 s to 0.53 s (40 s batches, same batches, versions alternated).
    log_sum = torch.nn.functional.softplus(xf - shift)
    return (log_sum - 0.08 * xf - offset).to(x.dtype)


def swoosh_l_reference(x: Tensor) -> Tensor:
    return swoosh_reference(x, SWOOSH_L_SHIFT, SWOOSH_L_OFFSET)


def swoosh_r_reference(x: Tensor) -> Tensor:
    return swoosh_reference(x, SWOOSH_R_SHIFT, SWOOSH_R_OFFSET)


def encode_derivative(x: Tensor, shift: float) -> Tensor:
    """k2's uint8 code of the derivative, with stochastic rounding (torch RNG)."""
    g = torch.sigmoid(x.float() - shift)
    return torch.floor(g * (1.0 / COMPACT_SCALE) + torch.rand_like(g)).clamp_(0, 255).to(torch.uint8)


def decode_derivative(code: Tensor) -> Tensor:
    return code.float() * COMPACT_SCALE + COMPACT_FLOOR


class _SwooshCompactReference(torch.autograd.Function):
    """Reference for compact mode: saves only the uint8 code."""

    @staticmethod
    def forward(ctx, x, shift, offset):
        with torch.no_grad():
            y = swoosh_reference(x, shift, offset)
            ctx.save_for_backward(encode_derivative(x, shift))
        return y

    @staticmethod
    def backward(ctx, grad):
        (code,) = ctx.saved_tensors
        return (grad.float() * decode_derivative(code)).to(grad.dtype), None, None


# -------------------------------------------------------------------------------- fused (op)
_seed_cell = threading.local()


def _draw_seed() -> int:
    """A kernel RNG seed in [0, 2**31) from torch's CPU generator (so torch.manual_seed makes runs
    repeatable): random_() on a per-thread 0-d int32 tensor (its range is the int32 range, so no
    bound to parse), ~1.1 us of host time against ~3.5 us for torch.randint(..., (1,)).item()."""
    cell = getattr(_seed_cell, "t", None)
    if cell is None:
        cell = _seed_cell.t = torch.empty((), dtype=torch.int32)
    return cell.random_().item()


def _fwd_fake(x: Tensor, shift: float, offset: float, compact: bool) -> Tuple[Tensor, Tensor]:
    code_shape = x.shape if compact else (0,)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device), x.new_empty(code_shape, dtype=torch.uint8)


def _swoosh_fwd_impl(x: Tensor, shift: float, offset: float, compact: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """(y, uint8 code or None)."""
    xc = x if x.is_contiguous() else x.contiguous()
    y = torch.empty_like(xc)  # xc is contiguous (see empty_out): no second check
    code, seed = None, 0
    if compact:
        code = torch.empty_like(xc, dtype=torch.uint8)
        seed = _draw_seed()
    kernels("swoosh").forward(xc, y, code, seed, shift, offset)
    return y, code


def _swoosh_fwd_op_impl(x: Tensor, shift: float, offset: float, compact: bool) -> Tuple[Tensor, Tensor]:
    y, code = _swoosh_fwd_impl(x, shift, offset, compact)
    return y, (code if compact else x.new_empty((0,), dtype=torch.uint8))


def _swoosh_bwd_impl(grad: Tensor, saved: Tensor, shift: float, compact: bool) -> Tensor:
    g = grad if grad.is_contiguous() else grad.contiguous()
    s = saved if saved.is_contiguous() else saved.contiguous()
    dx = empty_out(g)
    kernels("swoosh").backward(g, s, dx, shift, compact)
    return dx


_swoosh_fwd = FusedOp("swoosh_fwd", _swoosh_fwd_op_impl, _fwd_fake)
_swoosh_bwd = FusedOp("swoosh_bwd", _swoosh_bwd_impl,
                      lambda grad, saved, shift, compact: torch.empty(grad.shape, dtype=grad.dtype, device=grad.device))


def _setup(ctx, inputs, output):
    x, shift, _offset, compact = inputs
    ctx.shift, ctx.compact = shift, compact
    ctx.save_for_backward(output[1] if compact else x)  # 1 byte/element, or x itself


def _backward(ctx, grad_y, _grad_code):
    (saved,) = ctx.saved_tensors
    return _swoosh_bwd.op(grad_y, saved, ctx.shift, ctx.compact), None, None, None


register_autograd(_swoosh_fwd.op, _backward, _setup)


class _SwooshFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensor. The
    constants come as one (shift, offset, compact) tuple, built once per activation below: one
    argument and one ctx attribute instead of three for the C++ apply to process (host time)."""

    @staticmethod
    def forward(ctx, x, params):
        shift, offset, compact = params
        y, code = _swoosh_fwd_impl(x, shift, offset, compact)
        ctx.params = params
        ctx.save_for_backward(code if compact else x)
        return y

    @staticmethod
    @backward_once
    def backward(ctx, grad_y):
        (saved,) = ctx.saved_tensors
        shift, _, compact = ctx.params
        return _swoosh_bwd_impl(grad_y, saved, shift, compact), None


_apply_swoosh = eager_apply(_SwooshFused)


# ---------------------------------------------------------------------------------- dispatch
def _swoosh(x: Tensor, params: Tuple[float, float, bool]) -> Tensor:
    """params: (shift, offset, compact_derivative as a bool)."""
    path = route(x)
    if path == FUNCTION:
        return _apply_swoosh(x, params)
    shift, offset, compact = params
    if path == LAUNCH:
        return _swoosh_fwd_impl(x, shift, offset, False)[0]
    # inside a torch.func transform the exact reference (the compact one is an autograd.Function
    # without the setup_context functorch needs; same values, only more memory kept)
    compact = compact and x.requires_grad and torch.is_grad_enabled() and not _functorch_active()
    if path == CUSTOM_OP:
        return _swoosh_fwd.op(x, shift, offset, compact)[0]
    if compact:
        return _SwooshCompactReference.apply(x, shift, offset)
    return swoosh_reference(x, shift, offset)


def swoosh(x: Tensor, shift: float, offset: float, compact_derivative: bool = False) -> Tensor:
    return _swoosh(x, (shift, offset, bool(compact_derivative)))


_SWOOSH_L = (SWOOSH_L_SHIFT, SWOOSH_L_OFFSET, False), (SWOOSH_L_SHIFT, SWOOSH_L_OFFSET, True)
_SWOOSH_R = (SWOOSH_R_SHIFT, SWOOSH_R_OFFSET, False), (SWOOSH_R_SHIFT, SWOOSH_R_OFFSET, True)


def swoosh_l(x: Tensor, compact_derivative: bool = False) -> Tensor:
    return _swoosh(x, _SWOOSH_L[1 if compact_derivative else 0])


def swoosh_r(x: Tensor, compact_derivative: bool = False) -> Tensor:
    return _swoosh(x, _SWOOSH_R[1 if compact_derivative else 0])
