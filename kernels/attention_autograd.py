"""Autograd wiring of the fused attention: torch.library custom ops around the kernels, the handle
that stands for the shared weights, and the two ways of using them.

Custom ops (namespace zipformer_fast, fake impls for torch.compile / FakeTensorMode, autograd
registered): attn_weights (per-row softmax statistics, optionally the materialised weights),
attn_apply (weights @ v recomputed from the statistics) and attn_bwd (every gradient of one use,
or of the materialised weights). No `from __future__ import annotations` here: custom_op reads the
annotations as real types.

recompute mode: `attention_handle` runs attn_weights once without a gradient path (the softmax
statistics are a function of the scores, and each use's backward dS = P * (dP - D_i) is exact on
its own) and returns an `AttentionHandle` holding q, k, p, pos_t, masks and lse2. Each use
(`apply_handle`) is one attn_apply call taking q, k, p, pos_t and v; autograd sums the q/k/p/pos
gradients of the three uses. Saved for backward: the inputs (shared storage) plus the use's output
and O(T) statistics; nothing of size T x T.

materialize mode: `materialized_weights` writes W (H, B, T, T) once in the compute dtype; the uses
are plain matmuls on it and autograd sums their dW before one fused backward.

icefall's training-only score penalty (identity forward, +1e-4*sign(S) where |S| > 25 in
backward) must be added once per weights tensor: the materialised backward adds it itself; in
recompute mode the first non-constant all-heads use claims it (the handle shares a flag).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from zipformer_fast.ops._registry import custom_op, register_autograd

from .attention_bwd import attention_bwd
from .attention_fwd import attention_apply_fwd, attention_stats


def _none_if_empty(t: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is not None and t.numel() > 0 else None


def _flags(kpm: Optional[Tensor], am: Optional[Tensor]) -> dict:
    return dict(HAS_KPM=kpm is not None, HAS_AM=am is not None)


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """rowsum(a * b) in fp32 over the last dim, one head at a time (bounds the fp32 temporary)."""
    return torch.stack([(a[i].float() * b[i].float()).sum(-1) for i in range(a.shape[0])])


# ------------------------------------------------------------------------------ custom ops
def _weights_fake(q, k, p, pos_t, kpm, am, write_weights, penalize):
    T, B, H, _ = q.shape
    w_shape = (H, B, T, T) if write_weights else (0,)
    return q.new_empty((2, B, H, T), dtype=torch.float32), q.new_empty(w_shape)


@custom_op("attn_weights", fake=_weights_fake)
def _attn_weights(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], kpm: Optional[Tensor],
                  am: Optional[Tensor], write_weights: bool, penalize: bool) -> Tuple[Tensor, Tensor]:
    """row statistics (2, B, H, T) fp32 (max, 1/sum; see kernels/attention_common.probs) and W (H, B, T, T) in q's dtype (empty unless write_weights);
    kpm / am are uint8 masks (1 = masked). `penalize` only matters to the backward."""
    q, k, p = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, p))
    lse2, w = attention_stats(q, k, p, pos_t, kpm if kpm is not None else q,
                              am if am is not None else q, _flags(kpm, am), write_weights)
    return lse2, (w if w is not None else q.new_empty((0,)))


def _weights_setup(ctx, inputs, output):
    q, k, p, pos_t, kpm, am, write_weights, penalize = inputs
    lse2, w = output
    ctx.save_for_backward(q, k, p, pos_t, kpm, am, lse2, w)
    ctx.penalize = penalize


def _weights_backward(ctx, _dlse, dw):
    q, k, p, pos_t, kpm, am, lse2, w = ctx.saved_tensors
    if dw is None or w.numel() == 0:
        return None, None, None, None, None, None, None, None
    dw = dw.contiguous()
    delta = _row_dot(dw, w)
    dq, dk, dp, dpos, _ = _attn_bwd(q, k, p, pos_t, kpm, am, lse2, delta, None, None, dw, None,
                                    0, q.shape[2], False, ctx.penalize, True, False)
    return dq, dk, _none_if_empty(dp), _none_if_empty(dpos), None, None, None, None


register_autograd(_attn_weights, _weights_backward, _weights_setup)


def _apply_fake(q, k, p, pos_t, v, lse2, kpm, am, h0, const, penalize):
    hsel, B, T, dv = v.shape
    return (v.new_empty((hsel, B, T, dv)),
            lse2.new_empty((hsel, B, T) if const else (0,)))


@custom_op("attn_apply", fake=_apply_fake)
def _attn_apply(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], v: Tensor, lse2: Tensor,
                kpm: Optional[Tensor], am: Optional[Tensor], h0: int, const: bool,
                penalize: bool) -> Tuple[Tensor, Tensor]:
    """out (HSEL, B, T, dv) = W[h0:h0+HSEL] @ v, W recomputed; cnt (HSEL, B, T) for const."""
    q, k, p = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, p))
    out, cnt = attention_apply_fwd(q, k, p, pos_t, kpm if kpm is not None else q,
                                   am if am is not None else q, _flags(kpm, am), lse2, v, h0, const)
    return out, (cnt if cnt is not None else lse2.new_empty((0,)))


def _apply_setup(ctx, inputs, output):
    q, k, p, pos_t, v, lse2, kpm, am, h0, const, penalize = inputs
    out, cnt = output
    ctx.save_for_backward(q, k, p, pos_t, v, lse2, kpm, am, out, cnt)
    ctx.h0, ctx.const, ctx.penalize = h0, const, penalize


def _apply_backward(ctx, dout, _dcnt):
    q, k, p, pos_t, v, lse2, kpm, am, out, cnt = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_qk = any(need[:4]) and not ctx.const
    dout = dout.contiguous()
    delta = lse2.new_empty((0,)) if ctx.const else _row_dot(dout, out)
    dq, dk, dp, dpos, dv = _attn_bwd(q, k, p, pos_t, kpm, am, lse2, delta, dout, v, None,
                                     cnt if ctx.const else None, ctx.h0, v.shape[0], ctx.const,
                                     ctx.penalize, need_qk, bool(need[4]))
    return (_none_if_empty(dq), _none_if_empty(dk), _none_if_empty(dp), _none_if_empty(dpos),
            _none_if_empty(dv), None, None, None, None, None, None)


register_autograd(_attn_apply, _apply_backward, _apply_setup)


def _bwd_fake(q, k, p, pos_t, kpm, am, lse2, delta, dout, v, dw, cnt, h0, hsel, const, penalize,
              need_qk, need_v):
    has_pos = pos_t is not None
    qk = need_qk and not const
    like = [(q, qk), (k, qk), (p, qk and has_pos), (pos_t, qk and has_pos), (v, need_v and dw is None)]
    return [t.new_empty(t.shape) if want else q.new_empty((0,)) for t, want in like]


@custom_op("attn_bwd", fake=_bwd_fake)
def _attn_bwd(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], kpm: Optional[Tensor],
              am: Optional[Tensor], lse2: Tensor, delta: Tensor, dout: Optional[Tensor],
              v: Optional[Tensor], dw: Optional[Tensor], cnt: Optional[Tensor], h0: int, hsel: int,
              const: bool, penalize: bool, need_qk: bool, need_v: bool) -> List[Tensor]:
    """[dq, dk, dp, dpos_t, dv] of one use (dout, v) or of the materialised weights (dw); an empty
    tensor stands for a gradient not computed."""
    q, k, p = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, p))
    grads = attention_bwd(q, k, p, pos_t, kpm if kpm is not None else q, am if am is not None else q,
                          _flags(kpm, am), lse2, h0=h0, hsel=hsel,
                          delta=delta if delta.numel() else None, dout=dout, v=v, dw=dw, cnt=cnt,
                          const=const, penalize=penalize, need_qk=need_qk, need_v=need_v)
    return [g if g is not None else q.new_empty((0,)) for g in grads]  # distinct: no aliasing


# ------------------------------------------------------------------------------ the handle
def mask_u8(mask: Optional[Tensor]) -> Optional[Tensor]:
    """uint8 copy of a bool mask (1 = masked), made once per layer and shared by every use."""
    return mask.to(torch.uint8).contiguous() if mask is not None else None


class AttentionHandle:
    """The shared weights of one layer, never materialised: softmax(S) of ops.attention.

    `heads` is None (all H heads) or 0 (head 0 only, what non-linear attention uses); `const`
    selects icefall's constant attention. `shape` is that of the tensor it stands for."""

    def __init__(self, q, k, p, pos_t, kpm, am, lse2, penalize, heads: Optional[int] = None,
                 const: bool = False, penalty_flag=None):
        self.q, self.k, self.p, self.pos_t = q, k, p, pos_t
        self.kpm, self.am = kpm, am
        self.lse2 = lse2
        self.heads, self.const = heads, const
        # one-element list shared by every handle derived from the same weights
        self.penalty_flag = penalty_flag if penalty_flag is not None else [bool(penalize)]

    def _derive(self, heads, const):
        return AttentionHandle(self.q, self.k, self.p, self.pos_t, self.kpm, self.am, self.lse2,
                               False, heads, const, self.penalty_flag)

    def head0(self) -> "AttentionHandle":
        return self._derive(0, self.const)

    def constant(self) -> "AttentionHandle":
        return self._derive(self.heads, True)

    @property
    def shape(self):
        T, B, H, _ = self.q.shape
        return torch.Size((1 if self.heads is not None else H, B, T, T))

    @property
    def dtype(self):
        return self.q.dtype

    @property
    def device(self):
        return self.q.device

    def dim(self) -> int:
        return 4

    def __repr__(self):
        return (f"AttentionHandle(shape={tuple(self.shape)}, heads={self.heads}, const={self.const},"
                f" dtype={self.dtype})")


def attention_handle(q, k, p, pos_t, key_padding_mask, attn_mask, penalize) -> AttentionHandle:
    kpm, am = mask_u8(key_padding_mask), mask_u8(attn_mask)
    with torch.no_grad():
        lse2, _ = _attn_weights(q.detach(), k.detach(), p.detach(),
                                pos_t.detach() if pos_t is not None else None, kpm, am, False, False)
    return AttentionHandle(q, k, p, pos_t, kpm, am, lse2, penalize)


def apply_handle(handle: AttentionHandle, v: Tensor) -> Tensor:
    """handle's weights @ v, v (HSEL, B, T, dv) with HSEL = 1 for head 0 else H."""
    T, B, H, _ = handle.q.shape
    hsel = 1 if handle.heads is not None else H
    if v.dim() != 4 or v.shape[0] != hsel or v.shape[1] != B or v.shape[2] != T:
        raise ValueError(f"attention_apply: v has shape {tuple(v.shape)}, expected ({hsel}, {B}, {T}, dv)"
                         f" for weights {handle}")
    penalize = False
    if handle.heads is None and not handle.const and handle.penalty_flag[0] and torch.is_grad_enabled():
        penalize, handle.penalty_flag[0] = True, False
    h0 = handle.heads if handle.heads is not None else 0
    if v.stride(-1) != 1:
        v = v.contiguous()
    out, _ = _attn_apply(handle.q, handle.k, handle.p, handle.pos_t, v, handle.lse2, handle.kpm,
                         handle.am, h0, handle.const, penalize)
    return out


def materialized_weights(q, k, p, pos_t, key_padding_mask, attn_mask, penalize) -> Tensor:
    """W = softmax(S) written once (H, B, T, T) in q's dtype; fused backward from the summed dW."""
    _, w = _attn_weights(q, k, p, pos_t, mask_u8(key_padding_mask), mask_u8(attn_mask), True,
                         bool(penalize))
    return w
