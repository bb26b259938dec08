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
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

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
    return rel.as_strided(
        (H, B, T, T),
        (rel.stride(0), rel.stride(1), rel.stride(2) - rel.stride(3), rel.stride(3)),
        storage_offset=rel.storage_offset() + rel.stride(3) * (T - 1),
    )


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
    """The shared weights of one Zipformer layer (reference: the (H,B,T,T) tensor)."""
    return attention_weights_reference(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize)


def attention_head0(weights):
    """The weights non-linear attention uses: head 0 only, shape (1,B,T,T)."""
    return weights[0:1]


def constant_attention(weights):
    """icefall's const_attention: uniform weights over the keys whose weight is > 0 (training only)."""
    w = (weights > 0.0).to(weights.dtype)
    return w * (1.0 / w.sum(dim=-1, keepdim=True))


def attention_apply(weights, v: Tensor) -> Tensor:
    """weights @ v for weights from `attention_weights` (or head0 / constant of them); v (H,B,T,dv)."""
    return attention_apply_reference(weights, v)
