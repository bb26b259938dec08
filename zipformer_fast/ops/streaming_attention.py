"""Attention weights of one streaming chunk against cached keys (icefall
RelPositionMultiheadAttentionWeights.streaming_forward).

    S[h,b,i,j] = q[i,b,h,:] . k[j,b,h,:]  +  p[i,b,h,:] . pos_proj[(T-1) - i + j, h, :]
    S = -1000 where key_padding_mask[b,j];   W = softmax_j(S)

for T queries (the chunk) and K = L + T keys (L cached left-context keys, then the chunk's own);
pos_proj has 2T-1+L rows, row n holding relative offset n - (T-1+L) (key position minus query
position, the query at key position L+i).

Reference only, on every backend: the fused attention kernels assume as many keys as queries (the
non-streaming layout), and a streaming chunk is small (T = chunk/ds queries against L/ds + T keys,
e.g. 16 x 80 in stack 0 of a 320 ms / 1.28 s model), so the (H, B, T, K) scores cost little.

The relative shift is a gather with indexes computed from shapes alone (icefall uses as_strided,
and gather only when tracing; both pick the same elements, so the values are identical): this keeps
the op traceable by torch.onnx.export.
"""
from typing import Optional

import torch
from torch import Tensor

MASK_FILL = -1000.0


def relative_shift_index(num_queries: int, num_keys: int, device=None) -> Tensor:
    """(T, K) int64: column (T-1) - i + j of the (T, 2T-1+L) positional score matrix for query i, key j."""
    rows = torch.arange(num_queries - 1, -1, -1, device=device).unsqueeze(1)
    cols = torch.arange(num_keys, device=device).unsqueeze(0)
    return rows + cols


def streaming_attention_weights(q: Tensor, k: Tensor, p: Tensor, pos_proj: Tensor,
                                key_padding_mask: Optional[Tensor]) -> Tensor:
    """q (T,B,H,dq), k (K,B,H,dq), p (T,B,H,dp), pos_proj (2T-1+L, H, dp) with L = K - T,
    key_padding_mask (B,K) bool (True = ignore) -> W (H,B,T,K)."""
    T, B, H, dp = p.shape
    K = k.shape[0]
    n = 2 * T - 1 + (K - T)
    scores = torch.matmul(q.permute(2, 1, 0, 3), k.permute(2, 1, 3, 0))      # (H,B,T,K)
    pos = pos_proj.reshape(-1, n, H, dp).permute(2, 0, 3, 1)                 # (H,1,dp,n)
    rel = torch.matmul(p.permute(2, 1, 0, 3), pos)                           # (H,B,T,n)
    index = relative_shift_index(T, K, device=rel.device).expand(H, B, T, K)
    scores = scores + torch.gather(rel, dim=3, index=index)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask.to(torch.bool).unsqueeze(1), MASK_FILL)
    return scores.softmax(dim=-1)
