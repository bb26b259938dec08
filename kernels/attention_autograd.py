"""Autograd wiring of the fused attention: the handle that stands for the shared weights, and the
two ways of using them.

recompute mode: `attention_handle` runs the stats kernel once (no gradient path of its own: the
softmax statistics are a function of the scores, and each use's backward dS = P * (dP - D_i) is
exact on its own) and returns an `AttentionHandle` holding q, k, p, pos_t, masks and lse2. Each use
(`apply_handle`) is its own autograd.Function taking q, k, p, pos_t and v, recomputing the weights
tile by tile; autograd sums the q/k/p/pos gradients of the three uses. Saved for backward: the
inputs (shared storage) plus the use's output and the O(T) statistics; nothing of size T x T.

materialize mode: `MaterializedWeights` writes W (H, B, T, T) once in the compute dtype; the uses
are plain matmuls on it and autograd sums their dW before one fused backward.

icefall's training-only score penalty (identity forward, +1e-4*sign(S) where |S| > 25 in
backward) must be added once per weights tensor: the materialised backward adds it itself; in
recompute mode the first non-constant all-heads use claims it (the handle shares a flag).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .attention_bwd import attention_bwd
from .attention_fwd import attention_apply_fwd, attention_stats, mask_args


def _row_dot(a: Tensor, b: Tensor) -> Tensor:
    """rowsum(a * b) in fp32 over the last dim, one head at a time (bounds the fp32 temporary)."""
    return torch.stack([(a[i].float() * b[i].float()).sum(-1) for i in range(a.shape[0])])


class AttentionHandle:
    """The shared weights of one layer, never materialised: softmax(S) of the module docstring.

    `heads` is None (all H heads) or 0 (head 0 only, what non-linear attention uses); `const`
    selects icefall's constant attention. `shape` is that of the tensor it stands for."""

    def __init__(self, q, k, p, pos_t, key_padding_mask, attn_mask, lse2, penalize,
                 heads: Optional[int] = None, const: bool = False, penalty_flag=None):
        self.q, self.k, self.p, self.pos_t = q, k, p, pos_t
        self.key_padding_mask, self.attn_mask = key_padding_mask, attn_mask
        self.lse2 = lse2
        self.heads, self.const = heads, const
        # one-element list shared by every handle derived from the same weights
        self.penalty_flag = penalty_flag if penalty_flag is not None else [bool(penalize)]

    def _derive(self, heads, const):
        return AttentionHandle(self.q, self.k, self.p, self.pos_t, self.key_padding_mask,
                               self.attn_mask, self.lse2, False, heads, const, self.penalty_flag)

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
    kpm, am, flags = mask_args(q, key_padding_mask, attn_mask)
    with torch.no_grad():
        lse2, _ = attention_stats(q.detach(), k.detach(), p.detach(),
                                  pos_t.detach() if pos_t is not None else None, kpm, am, flags,
                                  write_weights=False)
    return AttentionHandle(q, k, p, pos_t, key_padding_mask, attn_mask, lse2, penalize)


class _ApplyRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, p, pos_t, v, lse2, key_padding_mask, attn_mask, h0, const, penalize):
        kpm, am, flags = mask_args(q, key_padding_mask, attn_mask)
        out, cnt = attention_apply_fwd(q, k, p, pos_t, kpm, am, flags, lse2, v, h0, const)
        ctx.save_for_backward(q, k, p, pos_t, v, lse2, kpm, am, out, cnt)
        ctx.flags, ctx.h0, ctx.const, ctx.penalize = flags, h0, const, penalize
        ctx.has_pos = pos_t is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, p, pos_t, v, lse2, kpm, am, out, cnt = ctx.saved_tensors
        if not ctx.has_pos:
            pos_t = None
        need = ctx.needs_input_grad
        dout = dout.contiguous()
        delta = None if ctx.const else _row_dot(dout, out)
        dq, dk, dp, dpos, dv = attention_bwd(
            q, k, p, pos_t, kpm, am, ctx.flags, lse2, h0=ctx.h0, hsel=v.shape[0], delta=delta,
            dout=dout, v=v, cnt=cnt, const=ctx.const, penalize=ctx.penalize,
            need_qk=any(need[:4]), need_v=need[4])
        return dq, dk, dp, dpos, dv, None, None, None, None, None, None


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
    return _ApplyRecompute.apply(handle.q, handle.k, handle.p, handle.pos_t, v, handle.lse2,
                                 handle.key_padding_mask, handle.attn_mask, h0, handle.const,
                                 penalize)


class MaterializedWeights(torch.autograd.Function):
    """W = softmax(S) written once (H, B, T, T) in q's dtype; fused backward from the summed dW."""

    @staticmethod
    def forward(ctx, q, k, p, pos_t, key_padding_mask, attn_mask, penalize):
        kpm, am, flags = mask_args(q, key_padding_mask, attn_mask)
        lse2, w = attention_stats(q, k, p, pos_t, kpm, am, flags, write_weights=True)
        ctx.save_for_backward(q, k, p, pos_t, kpm, am, lse2, w)
        ctx.flags, ctx.penalize, ctx.has_pos = flags, penalize, pos_t is not None
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, p, pos_t, kpm, am, lse2, w = ctx.saved_tensors
        if not ctx.has_pos:
            pos_t = None
        dw = dw.contiguous()
        delta = _row_dot(dw, w)
        dq, dk, dp, dpos, _ = attention_bwd(
            q, k, p, pos_t, kpm, am, ctx.flags, lse2, h0=0, hsel=q.shape[2], delta=delta, dw=dw,
            penalize=ctx.penalize, need_v=False)
        return dq, dk, dp, dpos, None, None, None
