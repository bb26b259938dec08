"""Autograd wiring of the fused attention (kernels/attention_fwd.py, attention_bwd.py): torch.library
custom ops around the kernels, the handle that stands for the shared weights, and the two ways of
using them. Imported by ops/attention.py only when the fused path runs (it needs triton).

Custom ops (namespace zipformer_fast, fake impls for torch.compile / FakeTensorMode, autograd
registered): attn_weights (materialised weights and their row statistics), attn_apply (one use,
weights @ v recomputed; the first use of a handle also returns the statistics) and attn_bwd (every
gradient of one use, or of the materialised weights, in one score pass). No
`from __future__ import annotations` here: custom_op reads the annotations as real types.

recompute mode: `attention_handle` launches nothing; it returns an `AttentionHandle` holding q, k,
p, pos_t and the masks. The first use (`apply_handle`; in a Zipformer layer the non-linear
attention on head 0) computes the softmax statistics of every head in the same pass as its
output (online softmax) and leaves them on the handle for the later uses. The statistics carry no
gradient: each use's backward dS = P * (dP - D_i) is exact on its own, and autograd sums the
q/k/p/pos gradients of the three uses. Saved for backward: the inputs (shared storage) plus each
use's v, output and O(T) statistics; nothing of size T x T.

materialize mode: `materialized_weights` writes W (H, B, T, T) once in the compute dtype; the uses
are plain matmuls on it and autograd sums their dW before one fused backward.

icefall's training-only score penalty (identity forward, +1e-4*sign(S) where |S| > 25 in
backward) must be added once per weights tensor: the materialised backward adds it itself; in
recompute mode the first non-constant all-heads use claims it (the handle's shared state).
"""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from zipformer_fast.kernels.attention_bwd import attention_bwd
from zipformer_fast.kernels.attention_fwd import attention_apply_fwd, attention_weights_fwd

from ._registry import custom_op, register_autograd


def _none_if_empty(t: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is not None and t.numel() > 0 else None


def _flags(kpm: Optional[Tensor], am: Optional[Tensor]) -> dict:
    return dict(HAS_KPM=kpm is not None, HAS_AM=am is not None)


def _contiguous_heads(q, k, p):
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, p))


def _mask_args(q, kpm, am):
    return kpm if kpm is not None else q, am if am is not None else q


# ------------------------------------------------------------------------------ custom ops
def _weights_fake(q, k, p, pos_t, kpm, am, penalize):
    T, B, H, _ = q.shape
    return q.new_empty((2, B, H, T), dtype=torch.float32), q.new_empty((H, B, T, T))


@custom_op("attn_weights", fake=_weights_fake)
def _attn_weights(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], kpm: Optional[Tensor],
                  am: Optional[Tensor], penalize: bool) -> Tuple[Tensor, Tensor]:
    """Row statistics (2, B, H, T) fp32 (max, 1/sum; see kernels/attention_common.probs) and W
    (H, B, T, T) in q's dtype; kpm / am are uint8 masks (1 = masked). `penalize` only matters to
    the backward."""
    q, k, p = _contiguous_heads(q, k, p)
    return attention_weights_fwd(q, k, p, pos_t, *_mask_args(q, kpm, am), _flags(kpm, am))


def _weights_setup(ctx, inputs, output):
    q, k, p, pos_t, kpm, am, penalize = inputs
    stats, w = output
    ctx.mark_non_differentiable(stats)
    ctx.save_for_backward(q, k, p, pos_t, kpm, am, stats, w)
    ctx.penalize = penalize


def _weights_backward(ctx, _dstats, dw):
    q, k, p, pos_t, kpm, am, stats, w = ctx.saved_tensors
    if dw is None:
        return None, None, None, None, None, None, None
    dq, dk, dp, dpos, _ = _attn_bwd(q, k, p, pos_t, kpm, am, stats, None, None, None, dw.contiguous(),
                                    w, None, 0, q.shape[2], False, ctx.penalize, True, False)
    return dq, dk, _none_if_empty(dp), _none_if_empty(dpos), None, None, None


register_autograd(_attn_weights, _weights_backward, _weights_setup)


def _apply_fake(q, k, p, pos_t, v, stats, kpm, am, h0, const, penalize):
    T, B, H, _ = q.shape
    hsel, _, _, dv = v.shape
    new_stats = (2, B, H, T) if stats.numel() == 0 else (0,)
    return (v.new_empty((hsel, B, T, dv)), q.new_empty(new_stats, dtype=torch.float32),
            q.new_empty((hsel, B, T) if const else (0,), dtype=torch.float32))


@custom_op("attn_apply", fake=_apply_fake)
def _attn_apply(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], v: Tensor, stats: Tensor,
                kpm: Optional[Tensor], am: Optional[Tensor], h0: int, const: bool,
                penalize: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """(out, new_stats, cnt): out (HSEL, B, T, dv) = W[h0:h0+HSEL] @ v with W recomputed from the
    statistics `stats`, or, when `stats` is empty (first use), computed online together with the
    statistics of every head, returned as new_stats (else empty); cnt (HSEL, B, T) for const."""
    q, k, p = _contiguous_heads(q, k, p)
    out, new_stats, cnt = attention_apply_fwd(q, k, p, pos_t, *_mask_args(q, kpm, am),
                                              _flags(kpm, am), stats if stats.numel() else None,
                                              v, h0, const)
    empty = q.new_empty((0,), dtype=torch.float32)
    return out, (new_stats if new_stats is not None else empty), (cnt if cnt is not None else empty.clone())


def _apply_setup(ctx, inputs, output):
    q, k, p, pos_t, v, stats, kpm, am, h0, const, penalize = inputs
    out, new_stats, cnt = output
    ctx.mark_non_differentiable(new_stats, cnt)
    ctx.save_for_backward(q, k, p, pos_t, v, stats if stats.numel() else new_stats, kpm, am, out, cnt)
    ctx.h0, ctx.const, ctx.penalize = h0, const, penalize


def _apply_backward(ctx, dout, _dstats, _dcnt):
    q, k, p, pos_t, v, stats, kpm, am, out, cnt = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_qk = any(need[:4]) and not ctx.const
    dq, dk, dp, dpos, dv = _attn_bwd(q, k, p, pos_t, kpm, am, stats, dout.contiguous(), v, out, None,
                                     None, cnt if ctx.const else None, ctx.h0, v.shape[0],
                                     ctx.const, ctx.penalize, need_qk, bool(need[4]))
    return (_none_if_empty(dq), _none_if_empty(dk), _none_if_empty(dp), _none_if_empty(dpos),
            _none_if_empty(dv), None, None, None, None, None, None)


register_autograd(_attn_apply, _apply_backward, _apply_setup)


def _bwd_fake(q, k, p, pos_t, kpm, am, stats, dout, v, out, dw, w, cnt, h0, hsel, const, penalize,
              need_qk, need_v):
    has_pos = pos_t is not None
    qk = need_qk and not const
    like = [(q, qk), (k, qk), (p, qk and has_pos), (pos_t, qk and has_pos), (v, need_v and dw is None)]
    return [t.new_empty(t.shape) if want else q.new_empty((0,)) for t, want in like]


@custom_op("attn_bwd", fake=_bwd_fake)
def _attn_bwd(q: Tensor, k: Tensor, p: Tensor, pos_t: Optional[Tensor], kpm: Optional[Tensor],
              am: Optional[Tensor], stats: Tensor, dout: Optional[Tensor], v: Optional[Tensor],
              out: Optional[Tensor], dw: Optional[Tensor], w: Optional[Tensor],
              cnt: Optional[Tensor], h0: int, hsel: int, const: bool, penalize: bool,
              need_qk: bool, need_v: bool) -> List[Tensor]:
    """[dq, dk, dp, dpos_t, dv] of one use (dout, v, out) or of the materialised weights (dw, w);
    an empty tensor stands for a gradient not computed."""
    q, k, p = _contiguous_heads(q, k, p)
    grads = attention_bwd(q, k, p, pos_t, *_mask_args(q, kpm, am), _flags(kpm, am), stats, h0=h0,
                          hsel=hsel, dout=dout, v=v, out=out, dw=dw, w=w, cnt=cnt, const=const,
                          penalize=penalize, need_qk=need_qk, need_v=need_v)
    return [g if g is not None else q.new_empty((0,)) for g in grads]  # distinct: no aliasing


# ------------------------------------------------------------------------------ the handle
def mask_u8(mask: Optional[Tensor], pad_rows: bool = False) -> Optional[Tensor]:
    """uint8 copy of a bool mask (1 = masked), made once per layer and shared by every use.
    pad_rows (the (T, T) attention mask): rows padded to a multiple of 16 bytes so that the
    kernels' mask-tile loads vectorise; the mask comes back (T, T rounded up to 16) and the kernels
    read its first T columns."""
    if mask is None:
        return None
    if not pad_rows:
        return mask.to(torch.uint8).contiguous()
    rows, cols = mask.shape
    padded = torch.zeros((rows, -(-cols // 16) * 16), dtype=torch.uint8, device=mask.device)
    padded[:, :cols] = mask
    return padded


class AttentionHandle:
    """The shared weights of one layer, never materialised: softmax(S) of ops.attention.

    `heads` is None (all H heads) or 0 (head 0 only, what non-linear attention uses); `const`
    selects icefall's constant attention. `shape` is that of the tensor it stands for. `shared`
    (one dict for every handle derived from the same weights) holds the row statistics once the
    first use has computed them, and whether the score penalty is still to be added."""

    def __init__(self, q, k, p, pos_t, kpm, am, penalize, heads: Optional[int] = None,
                 const: bool = False, shared: Optional[dict] = None):
        self.q, self.k, self.p, self.pos_t = q, k, p, pos_t
        self.kpm, self.am = kpm, am
        self.heads, self.const = heads, const
        self.shared = shared if shared is not None else dict(stats=None, penalize=bool(penalize))

    def _derive(self, heads, const):
        return AttentionHandle(self.q, self.k, self.p, self.pos_t, self.kpm, self.am, False, heads,
                               const, self.shared)

    def head0(self) -> "AttentionHandle":
        return self._derive(0, self.const)

    def constant(self) -> "AttentionHandle":
        return self._derive(self.heads, True)

    @property
    def stats(self) -> Optional[Tensor]:
        return self.shared["stats"]

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
    kpm, am = mask_u8(key_padding_mask), mask_u8(attn_mask, pad_rows=True)
    return AttentionHandle(q, k, p, pos_t, kpm, am, penalize)


def apply_handle(handle: AttentionHandle, v: Tensor) -> Tensor:
    """handle's weights @ v, v (HSEL, B, T, dv) with HSEL = 1 for head 0 else H."""
    T, B, H, _ = handle.q.shape
    hsel = 1 if handle.heads is not None else H
    if v.dim() != 4 or v.shape[0] != hsel or v.shape[1] != B or v.shape[2] != T:
        raise ValueError(f"attention_apply: v has shape {tuple(v.shape)}, expected ({hsel}, {B}, {T}, dv)"
                         f" for weights {handle}")
    shared = handle.shared
    penalize = False
    if handle.heads is None and not handle.const and shared["penalize"] and torch.is_grad_enabled():
        penalize, shared["penalize"] = True, False
    h0 = handle.heads if handle.heads is not None else 0
    if v.stride(-1) != 1:
        v = v.contiguous()
    stats = shared["stats"]
    out, new_stats, _ = _attn_apply(handle.q, handle.k, handle.p, handle.pos_t, v,
                                    stats if stats is not None else v.new_empty((0,), dtype=torch.float32),
                                    handle.kpm, handle.am, h0, handle.const, penalize)
    if stats is None:
        shared["stats"] = new_stats.detach()
    return out


def materialized_weights(q, k, p, pos_t, key_padding_mask, attn_mask, penalize) -> Tensor:
    """W = softmax(S) written once (H, B, T, T) in q's dtype; fused backward from the summed dW."""
    kpm, am = mask_u8(key_padding_mask), mask_u8(attn_mask, pad_rows=True)
    _, w = _attn_weights(q, k, p, pos_t, kpm, am, bool(penalize))
    return w
