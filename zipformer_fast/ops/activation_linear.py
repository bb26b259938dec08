"""Activation -> shared-dim dropout -> linear (icefall's ActivationDropoutAndLinear), and
linear -> activation (the first half of a feed-forward module, for inference).

    activation_dropout_linear: y = linear(swoosh(x) * dropout_mask, weight, bias)
    linear_swoosh:             y = swoosh(linear(x, weight, bias))

`dropout_mask` is None (eval, or p = 0) or a tensor broadcastable to x holding 0 or 1/(1-p); the
caller draws it (see `make_dropout_mask`) so that the reference and fused paths consume the same
random numbers.

Reference: plain autograd (it stores the activation output as well as x).
Fused (kernels/activation_linear.py; an autograd.Function in eager mode, the custom op
zipformer_fast::act_linear_fwd under torch.compile): a Triton GEMM whose
prologue computes swoosh(x) * mask per K tile; backward recomputes it in the prologue of the
weight-gradient GEMM and applies swoosh'(x) * mask in the epilogue of dY @ W. The activation is
never stored. Saved for backward: x, the weight (in the GEMM dtype: under autocast that is the
fp16/bf16 copy autocast would save too), the small mask. Under autocast the GEMM runs in the
autocast dtype and y has that dtype, like F.linear; without autocast x and weight must share a
dtype (F.linear's rule). x needs a unit channel stride (else copied); masks that are not shared
along leading dims (e.g. (T, 1, K)) are expanded to x's shape (a copy).

linear_swoosh (icefall order: in_proj -> hidden_balancer -> activation): the balancer is the
identity in forward and acts only in a training backward, so the fused epilogue is used only
when no gradient is needed (eval/inference; the FF module calls it there). With gradients it is
the reference composition: in training the activation belongs to out_proj's
activation_dropout_linear, which stores less (x only) than linear+activation would (z and h).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..backend import use_triton_for
from ._registry import (
    FUNCTION, LAUNCH, REFERENCE, FusedOp, backward_once, eager_apply, empty_out, gemm_weight, kernels, needs_grad,
    register_autograd, route, row_layout,
)
from .swoosh import (SWOOSH_L_OFFSET, SWOOSH_L_SHIFT, SWOOSH_R_OFFSET, SWOOSH_R_SHIFT, swoosh_l_reference,
                     swoosh_r_reference)

ACTIVATIONS = ("SwooshL", "SwooshR")
_CONSTANTS = {"SwooshL": (SWOOSH_L_SHIFT, SWOOSH_L_OFFSET), "SwooshR": (SWOOSH_R_SHIFT, SWOOSH_R_OFFSET)}


def _activation_constants(activation: str) -> Tuple[float, float]:
    if activation not in _CONSTANTS:
        raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
    return _CONSTANTS[activation]


def make_dropout_mask(x: Tensor, p: float, shared_dim: Optional[int]) -> Optional[Tensor]:
    """icefall's Dropout3-style mask: shape of x with `shared_dim` set to 1, values 0 or 1/(1-p)."""
    if p == 0.0:
        return None
    shape = list(x.shape)
    if shared_dim is not None:
        shape[shared_dim] = 1
    keep = torch.rand(*shape, device=x.device, dtype=x.dtype) > p
    return keep.to(x.dtype) * (1.0 / (1.0 - p))


# ---------------------------------------------------------------------------------- reference
def activation_dropout_linear_reference(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, dropout_mask: Optional[Tensor] = None
) -> Tensor:
    if activation == "SwooshL":
        h = swoosh_l_reference(x)
    elif activation == "SwooshR":
        h = swoosh_r_reference(x)
    else:
        raise ValueError(f"activation {activation!r}: expected one of {ACTIVATIONS}")
    if dropout_mask is not None:
        h = h * dropout_mask
    return torch.nn.functional.linear(h, weight, bias)


def linear_swoosh_reference(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    z = torch.nn.functional.linear(x, weight, bias)
    return swoosh_l_reference(z) if activation == "SwooshL" else swoosh_r_reference(z)


# ------------------------------------------------------------------------------- fused (ops)
def _mask_rows(mask: Tensor, x: Tensor) -> Tensor:
    """Mask broadcastable to x -> (R, K) contiguous such that row m of x uses mask row m % R."""
    K = x.shape[-1]
    m = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape))
    lead = 0
    while lead < x.dim() - 1 and m.shape[lead] == 1:
        lead += 1
    m = m.expand(tuple(m.shape[:lead]) + tuple(x.shape[lead:]))
    return m.reshape(-1, K).contiguous()


def _mask_arg(mask: Optional[Tensor], x: Tensor) -> Tuple[Optional[Tensor], int]:
    """(mask as the kernels read it, its row count R): row m of x uses mask row m % R. A
    contiguous mask shaped (1, ..., 1, x.shape[j:]) (icefall's shared-dim masks, (1, B, K)) is
    passed as is; others go through _mask_rows (views and a copy: host time)."""
    if mask is None:
        return None, 1
    ms, xs = mask.shape, x.shape
    n = len(ms)
    # icefall's (1, B, K) mask on a (T, B, K) input, without the general loop (0.88 -> 0.58 us)
    if n == 3 and len(xs) == 3 and ms[0] == 1 and ms[1] == xs[1] and ms[2] == xs[2] and mask.is_contiguous():
        return mask, ms[1]
    if n == len(xs) and mask.is_contiguous():
        j = 0
        while j < n - 1 and ms[j] == 1:
            j += 1
        for i in range(j, n):  # a loop, not all(<generator>): host time
            if ms[i] != xs[i]:
                break
        else:
            return mask, mask.numel() // xs[-1]
    m2 = _mask_rows(mask, x)
    return m2, m2.shape[0]


def _out_shape(x: Tensor, n: int):
    # a list, not x.shape[:-1] + (n,): building and parsing a torch.Size costs ~1 us more per call
    shape = list(x.shape)
    shape[-1] = n
    return shape


def _new_out(x: Tensor, weight: Tensor) -> Tensor:
    """y for x's rows and weight's outputs, in the GEMM dtype (weight's; x has it too on every
    eager path, so no dtype keyword to parse). A (T, B, K) x gives its sizes as three ints, which
    the argument parser takes ~0.5 us faster than a list (host time)."""
    N = weight.shape[0]
    if x.dtype == weight.dtype:
        s = x.shape
        if len(s) == 3:
            return x.new_empty(s[0], s[1], N)
        return x.new_empty(_out_shape(x, N))
    return x.new_empty(_out_shape(x, N), dtype=weight.dtype)


def _fwd_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], shift: float,
              offset: float) -> Tensor:
    return torch.empty(_out_shape(x, weight.shape[0]), dtype=weight.dtype, device=x.device)


def _layout(x: Tensor, mask: Optional[Tensor]):
    """How the kernels read x and the dropout mask: (x2, M rows, K, row stride, mask2, mask rows)."""
    x2, M, stride = row_layout(x)
    mask2, mask_rows = _mask_arg(mask, x)
    return x2, M, x.shape[-1], stride, mask2, mask_rows


def _act_linear_forward(x: Tensor, weight: Tensor, bias: Optional[Tensor], layout, shift: float,
                        offset: float) -> Tensor:
    x2, M, K, stride, mask2, mask_rows = layout
    y = _new_out(x, weight)
    kernels("activation_linear").forward(x2, M, K, stride, _contiguous(weight), bias, mask2, mask_rows, y, shift,
                                         offset)
    return y


def _act_linear_fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], mask: Optional[Tensor], shift: float,
                         offset: float) -> Tensor:
    # _layout and _act_linear_forward written out: the no-grad call is the one that must stay cheap
    x2, M, stride = row_layout(x)
    mask2, mask_rows = _mask_arg(mask, x)
    y = _new_out(x, weight)
    kernels("activation_linear").forward(x2, M, x.shape[-1], stride, _contiguous(weight), bias, mask2, mask_rows, y,
                                         shift, offset)
    return y


def _contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def _bwd_fake(grad: Tensor, x: Tensor, weight: Tensor, mask: Optional[Tensor], shift: float, offset: float,
              need_dx: bool, need_dw: bool, need_db: bool) -> Tuple[Tensor, Tensor, Tensor]:
    N = weight.shape[0]
    return (torch.empty(x.shape if need_dx else (0,), dtype=x.dtype, device=x.device),
            torch.empty(weight.shape if need_dw else (0,), dtype=weight.dtype, device=x.device),
            torch.empty((N,) if need_db else (0,), dtype=torch.float32, device=x.device))


def _act_linear_grads(grad: Tensor, x: Tensor, weight: Tensor, layout, shift: float, offset: float,
                      need_dx: bool, need_dw: bool, db: Optional[Tensor]):
    """(dx or None, dW in weight's dtype or None, db or None); layout: _layout(x, mask); db: the
    tensor to write the bias gradient into, allocated by the caller."""
    x2, M, K, stride, mask2, mask_rows = layout
    g = grad if grad.dtype == weight.dtype else grad.to(weight.dtype)
    dx = empty_out(x) if need_dx else None
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format) if need_dw else None
    kernels("activation_linear").backward(_contiguous(g), x2, M, K, stride, _contiguous(weight), mask2, mask_rows,
                                          shift, offset, dx, dw, db)
    return dx, dw, db


def _act_linear_bwd_impl(grad: Tensor, x: Tensor, weight: Tensor, mask: Optional[Tensor], shift: float, offset: float,
                         need_dx: bool, need_dw: bool, need_db: bool) -> Tuple[Tensor, Tensor, Tensor]:
    db = weight.new_empty((weight.shape[0],), dtype=torch.float32) if need_db else None
    dx, dw, db = _act_linear_grads(grad, x, weight, _layout(x, mask), shift, offset, need_dx, need_dw, db)
    # Outputs that are not needed are distinct empty tensors (custom-op outputs may not alias).
    return (dx if need_dx else x.new_empty((0,)), dw if need_dw else x.new_empty((0,), dtype=weight.dtype),
            db if need_db else x.new_empty((0,), dtype=torch.float32))


_act_linear_fwd = FusedOp("act_linear_fwd", _act_linear_fwd_impl, _fwd_fake)
_act_linear_bwd = FusedOp("act_linear_bwd", _act_linear_bwd_impl, _bwd_fake)


def _setup(ctx, inputs, output):
    x, weight, bias, mask, shift, offset = inputs
    ctx.shift, ctx.offset = shift, offset
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.save_for_backward(x, weight, mask)


def _backward(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_db = ctx.bias_dtype is not None and need[2]
    dx, dw, db = _act_linear_bwd.op(grad, x, weight, mask, ctx.shift, ctx.offset, need[0], need[1], need_db)
    return (dx if need[0] else None, dw if need[1] else None, db.to(ctx.bias_dtype) if need_db else None,
            None, None, None)


register_autograd(_act_linear_fwd.op, _backward, _setup)


class _ActLinearFused(torch.autograd.Function):
    """Eager twin of the op's registered autograd: same launchers, same saved tensors (plus the
    bias parameter itself, no copy: db is allocated like it, ~1 us less than a shaped
    allocation); db comes out of the dW pass's fold in the bias dtype. When the kernels read x and
    the mask as they are (the common case), the forward's layout ints are kept for backward (~1 us
    less per backward node than working them out again); the activation's (shift, offset) come as
    one tuple (one argument and one ctx attribute less); tensors only ever in saved_tensors, which
    the engine releases after this node's backward (a tensor on ctx would live to the end of it)."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, constants):
        layout = _layout(x, mask)
        x2, M, K, stride, mask2, mask_rows = layout
        ctx.constants = constants
        ctx.rows = (M, K, stride, mask_rows) if x2 is x and mask2 is mask else None
        ctx.save_for_backward(x, weight, mask, bias)
        return _act_linear_forward(x, weight, bias, layout, constants[0], constants[1])

    @staticmethod
    @backward_once
    def backward(ctx, grad):
        x, weight, mask, bias = ctx.saved_tensors
        rows = ctx.rows
        layout = _layout(x, mask) if rows is None else (x, rows[0], rows[1], rows[2], mask, rows[3])
        need = ctx.needs_input_grad
        db = torch.empty_like(bias, memory_format=torch.contiguous_format) if need[2] else None
        shift, offset = ctx.constants
        dx, dw, db = _act_linear_grads(grad, x, weight, layout, shift, offset, need[0], need[1], db)
        return dx, dw, db, None, None


_apply_act_linear = eager_apply(_ActLinearFused)


def _linear_act_fake(x: Tensor, weight: Tensor, bias: Optional[Tensor], shift: float, offset: float) -> Tensor:
    return torch.empty(_out_shape(x, weight.shape[0]), dtype=weight.dtype, device=x.device)


def _linear_act_fwd_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], shift: float, offset: float) -> Tensor:
    x2, M, stride = row_layout(x)
    y = _new_out(x, weight)
    kernels("activation_linear").linear_act_forward(x2, M, x.shape[-1], stride, _contiguous(weight), bias, y,
                                                    shift, offset)
    return y


_linear_act_fwd = FusedOp("linear_act_fwd", _linear_act_fwd_impl, _linear_act_fake)


# ---------------------------------------------------------------------------------- dispatch
def _gemm_operands(x: Tensor, weight: Tensor, name: str) -> Tuple[Tensor, Tensor]:
    """(x, weight) in the dtype the GEMM runs in: autocast's dtype inside an autocast region (as
    F.linear would be autocast), else both must already agree."""
    w = gemm_weight(x, weight, name)
    return (x if x.dtype == w.dtype else x.to(w.dtype)), w


def activation_dropout_linear(
    x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str, dropout_mask: Optional[Tensor] = None
) -> Tensor:
    constants = _activation_constants(activation)
    path = route(x, weight, bias, dropout_mask) if x.numel() > 0 else REFERENCE
    if path == REFERENCE:
        return activation_dropout_linear_reference(x, weight, bias, activation, dropout_mask)
    x, w = _gemm_operands(x, weight, "activation_dropout_linear")
    if path == FUNCTION:  # (shift, offset) as one argument: host time
        return _apply_act_linear(x, w, bias, dropout_mask, constants)
    shift, offset = constants
    if path == LAUNCH:
        return _act_linear_fwd_impl(x, w, bias, dropout_mask, shift, offset)
    return _act_linear_fwd.op(x, w, bias, dropout_mask, shift, offset)


def linear_swoosh(x: Tensor, weight: Tensor, bias: Optional[Tensor], activation: str) -> Tensor:
    """swoosh(linear(x)): fused epilogue when no gradient is needed, else the reference."""
    shift, offset = _activation_constants(activation)
    if not needs_grad(x, weight, bias) and x.numel() > 0 and use_triton_for(x, weight, bias):
        x, w = _gemm_operands(x, weight, "linear_swoosh")
        return _linear_act_fwd(x, w, bias, shift, offset)
    return linear_swoosh_reference(x, weight, bias, activation)
