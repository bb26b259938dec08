"""Zipformer's shared attention weights and their uses (icefall RelPositionMultiheadAttentionWeights,
SelfAttention, NonlinAttention).

Weights, per head h, batch b, query i, key j (no 1/sqrt(d): in_proj's initial scale replaces it):

    S[h,b,i,j] = q[i,b,h,:] . k[j,b,h,:]  +  p[i,b,h,:] . pos_proj[(T-1) - i + j, h, :]
    S = -1000 where attn_mask[i,j] or key_padding_mask[b,j]          (exp(-1000) is exactly 0)
    W = softmax_j(S)          (fp32 softmax; output in the compute dtype)

pos_proj is linear_pos(pos_emb): (2T-1, H, phd), row n holding relative offset n - (T-1); None
means the positional term is skipped (training-time pos_emb_skip). Row i, key j use offset j - i.

Uses: self-attention  out[h] = W[h] @ v[h];  non-linear attention  out = W[0] @ x.

Layouts: q, k (T,B,H,dq); p (T,B,H,dp); key_padding_mask (B,T) bool, True = padding;
attn_mask (T,T) bool, True = masked; v (H,B,T,dv).

Fused path (backend "triton", kernels/attention*.py): no (T, 2T-1) score matrix and no relative
shift copy; the positional term is computed tile by tile. Two modes
(`zipformer_fast.configure(attention_mode=...)`: auto | recompute | materialize; auto
materialises up to MATERIALIZE_MAX_T frames):
- materialize: `attention_weights` returns the (H,B,T,T) tensor in the compute dtype, written once
  by a kernel; head0/constant/apply are the tensor ops below; one fused backward from the summed dW.
- recompute: `attention_weights` returns an AttentionHandle (q, k, p, pos, masks); the first use
  computes every head's softmax statistics in its own pass (online softmax), later uses recompute
  the weights from them flash-attention style, and each use's backward is one pass, so forward
  and backward memory is linear in T. The three uses' gradients into q/k/p/pos are summed by
  autograd.
Streaming shapes (cached keys) and other layouts take the reference.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from zipformer_fast.backend import use_triton_for
from zipformer_fast.runtime import get_attention_mode

MASK_FILL = -1000.0


class _PenalizeAbsValuesGt(torch.autograd.Function):
    """Identity forward; backward adds penalty*sign(x) where |x| > limit (icefall penalize_abs_values_gt)."""

    @staticmethod
    def forward(ctx, x: Tensor, limit: float, penalty: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.limit, ctx.penalty = limit, penalty
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        extra = (x.abs() > ctx.limit).to(grad.dtype) * x.sign().to(grad.dtype) * ctx.penalty
        return grad + extra, None, None


def penalize_abs_values_gt(x: Tensor, limit: float, penalty: float) -> Tensor:
    if not x.requires_grad:
        return x
    return _PenalizeAbsValuesGt.apply(x, limit, penalty)


def relative_position_scores_reference(p: Tensor, pos_proj: Tensor) -> Tensor:
    """(H,B,T,T) positional scores via the (T, 2T-1) matrix and icefall's strided relative shift."""
    T, B, H, dp = p.shape
    ph = p.permute(2, 1, 0, 3)                                  # (H,B,T,dp)
    pos = pos_proj.reshape(-1, 2 * T - 1, H, dp).permute(2, 0, 3, 1)  # (H,1,dp,2T-1)
    rel = torch.matmul(ph, pos)                                 # (H,B,T,2T-1), contiguous
    if torch.jit.is_tracing() or torch.compiler.is_compiling():
        # Neither the ONNX exporter nor dynamo takes as_strided with a shape-dependent offset.
        return relative_shift_gather(rel)
    return rel.as_strided(
        (H, B, T, T),
        (rel.stride(0), rel.stride(1), rel.stride(2) - rel.stride(3), rel.stride(3)),
        storage_offset=rel.storage_offset() + rel.stride(3) * (T - 1),
    )


def relative_shift_gather(rel: Tensor) -> Tensor:
    """The strided relative shift above as a gather (icefall rel_shift's tracing branch): score
    [.., t, s] = rel[.., t, T - 1 - t + s]."""
    H, B, T, n = rel.shape
    index = (torch.arange(T - 1, -1, -1, device=rel.device).unsqueeze(1)
             + torch.arange(T, device=rel.device).unsqueeze(0))        # (T, T)
    return torch.gather(rel, 3, index.expand(H, B, T, T))


def attention_scores_reference(
    q: Tensor, k: Tensor, p: Tensor, pos_proj: Optional[Tensor],
    key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], penalize: bool = False,
) -> Tensor:
    scores = torch.matmul(q.permute(2, 1, 0, 3), k.permute(2, 1, 3, 0))  # (H,B,T,T)
    if pos_proj is not None:
        scores = scores + relative_position_scores_reference(p, pos_proj)
    if penalize:
        scores = penalize_abs_values_gt(scores, limit=25.0, penalty=1.0e-04)
    if attn_mask is not None:
        scores = scores.masked_fill(attn_mask, MASK_FILL)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.unsqueeze(1), MASK_FILL)
    return scores


def attention_weights_reference(
    q: Tensor, k: Tensor, p: Tensor, pos_proj: Optional[Tensor],
    key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], penalize: bool = False,
) -> Tensor:
    scores = attention_scores_reference(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize)
    return scores.softmax(dim=-1)


def attention_apply_reference(weights: Tensor, v: Tensor) -> Tensor:
    return torch.matmul(weights, v)


def attention_weights(
    q: Tensor, k: Tensor, p: Tensor, pos_proj: Optional[Tensor],
    key_padding_mask: Optional[Tensor], attn_mask: Optional[Tensor], penalize: bool = False,
):
    """The shared weights of one Zipformer layer.

    Reference backend: the (H,B,T,T) tensor. Fused (Triton) backend: in "materialize" mode the same
    tensor written by one kernel (fused backward); in "recompute" mode a lightweight
    `AttentionHandle` (q, k, p, pos, masks, softmax statistics) that attention_head0,
    constant_attention and attention_apply consume, recomputing the weights tile by tile so that
    memory stays linear in T. The mode comes from `attention_mode_for(T)`.
    """
    if _fused_supported(q, k, p, pos_proj, key_padding_mask, attn_mask):
        return _fused_attention_weights(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize)
    return attention_weights_reference(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize)


def _is_handle(weights) -> bool:
    return not isinstance(weights, Tensor)


def attention_head0(weights):
    """The weights non-linear attention uses: head 0 only, shape (1,B,T,T)."""
    if _is_handle(weights):
        return weights.head0()
    return weights[0:1]


def constant_attention(weights):
    """icefall's const_attention: uniform weights over the keys whose weight is > 0 (training only)."""
    if _is_handle(weights):
        return weights.constant()
    w = (weights > 0.0).to(weights.dtype)
    return w * (1.0 / w.sum(dim=-1, keepdim=True))


def attention_apply(weights, v: Tensor) -> Tensor:
    """weights @ v for weights from `attention_weights` (or head0 / constant of them); v (H,B,T,dv)."""
    if _is_handle(weights):
        from zipformer_fast.ops.attention_fused import apply_handle

        dtype = _autocast_dtype(v)
        return apply_handle(weights, v.to(dtype) if dtype is not None else v)
    return attention_apply_reference(weights, v)


# --------------------------------------------------------------------------- mode selection
# "auto": materialise the weights up to this many frames, recompute beyond. Reason: below ~1000
# frames the (H,B,T,T) weights in the compute dtype are small enough to keep (saved for backward
# in training), and cuBLAS uses of them beat recomputing the scores per use; beyond, they grow
# quadratically and recompute (linear in T) wins on memory and, on an H100 with the first
# generation of these kernels (bench/cases_attention.py, Zipformer-M stack 0, B=30, H=4, bf16,
# weights + NLA + SA1 + SA2, fwd+bwd ms reference / materialize / recompute: T=250 3.44 / 2.76 /
# 4.81; T=750 6.25 / 5.61 / 6.63; T=1500 22.6 / 19.3 / 18.9), on time too. The current kernels
# (one score pass per use, one backward pass per use) have not been timed on a GPU yet:
# `bench/kernels.py --attention` gives the figures to move the threshold by.
MATERIALIZE_MAX_T = 1024


def attention_mode_for(T: int) -> str:
    """"recompute" or "materialize" for a sequence of T frames under the current setting."""
    mode = get_attention_mode()
    if mode == "auto":
        return "materialize" if T <= MATERIALIZE_MAX_T else "recompute"
    return mode


# --------------------------------------------------------------------------- fused path
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _autocast_dtype(t: Tensor) -> Optional[torch.dtype]:
    """The autocast dtype for t's device inside an autocast region, else None."""
    try:
        enabled = torch.is_autocast_enabled(t.device.type)
    except RuntimeError:  # a device type autocast does not know (meta: offline memory counts)
        return None
    return torch.get_autocast_dtype(t.device.type) if enabled else None


def _fused_supported(q, k, p, pos_proj, key_padding_mask, attn_mask) -> bool:
    """The fused kernels cover icefall's non-streaming layout; anything else (cached keys of
    streaming, odd shapes) takes the reference."""
    if not use_triton_for(q, k, p, pos_proj, key_padding_mask, attn_mask):
        return False
    if q.dim() != 4 or k.shape != q.shape or p.dim() != 4 or p.shape[:3] != q.shape[:3]:
        return False
    T, B, H, _ = q.shape
    if pos_proj is not None and pos_proj.numel() != (2 * T - 1) * H * p.shape[-1]:
        return False
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, T):
        return False
    if attn_mask is not None and tuple(attn_mask.shape) != (T, T):
        return False
    return all(t.dtype in _FUSED_DTYPES for t in (q, k, p) + ((pos_proj,) if pos_proj is not None else ()))


def _fused_attention_weights(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize):
    from zipformer_fast.ops.attention_fused import attention_handle, materialized_weights

    T, B, H, dp = p.shape
    dtype = _autocast_dtype(q)
    if dtype is None:
        dtype = q.dtype
    q, k, p = (t.to(dtype) if t.stride(-1) == 1 else t.to(dtype).contiguous() for t in (q, k, p))
    pos_t = None
    if pos_proj is not None:
        # (H, dp, 2T-1): one contiguous row of offsets per (head, dim); a small copy, not saved.
        pos_t = pos_proj.reshape(2 * T - 1, H, dp).permute(1, 2, 0).to(dtype).contiguous()
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool, got {key_padding_mask.dtype}")
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be bool, got {attn_mask.dtype}")
    penalize = bool(penalize) and torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, p) + ((pos_t,) if pos_t is not None else ()))
    if attention_mode_for(T) == "materialize":
        return materialized_weights(q, k, p, pos_t, key_padding_mask, attn_mask, penalize)
    return attention_handle(q, k, p, pos_t, key_padding_mask, attn_mask, penalize)
