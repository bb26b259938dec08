"""Zipformer attention: shared weights (RelPositionMultiheadAttentionWeights), SelfAttention and
NonlinAttention, as in icefall's zipformer.py.

All hot math goes through zipformer_fast.ops (attention_weights / attention_head0 /
constant_attention / attention_apply). The "weights" these return may be an opaque object on a
fused backend, so the modules here never index or inspect it; they only pass it back to ops.

Layouts: x (T, B, D); q, k (T, B, H, qhd); p (T, B, H, phd); pos_proj (2T-1, H, phd) or None when the
positional term is skipped (training, probability pos_emb_skip_rate).
"""
from __future__ import annotations

import copy
import random
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops.attention import attention_apply, attention_weights
from ..ops.gating import mul_linear, tanh_gate
from ..ops.residual_linear import residual_linear
from ..ops.streaming_attention import streaming_attention_weights
from .grad_shapers import Balancer, Whiten, whitening_schedule
from .linear import ScaledLinear
from .randomness import device_side, keep_mask
from .scheduled_float import FloatLike, ScheduledFloat, value
from .streaming_state import check_cache


class RelPositionMultiheadAttentionWeights(nn.Module):
    """W = softmax(q.k + p.pos_proj[rel]) per head, (H, B, T, T); no 1/sqrt(d) (in_proj's init does it)."""

    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int,
                 dropout: float = 0.0, pos_emb_skip_rate: FloatLike = None):
        super().__init__()
        if pos_emb_skip_rate is None:
            pos_emb_skip_rate = ScheduledFloat((0.0, 0.5), (4000.0, 0.0))
        if dropout != 0.0:
            raise ValueError("RelPositionMultiheadAttentionWeights: icefall uses dropout 0.0 on the weights")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.query_head_dim = query_head_dim
        self.pos_head_dim = pos_head_dim
        self.dropout = dropout
        self.pos_emb_skip_rate = copy.deepcopy(pos_emb_skip_rate)
        in_proj_dim = (2 * query_head_dim + pos_head_dim) * num_heads
        self.in_proj = ScaledLinear(embed_dim, in_proj_dim, bias=True, initial_scale=query_head_dim ** -0.25)
        self.whiten_keys = Whiten(num_groups=num_heads, whitening_limit=whitening_schedule(3.0),
                                  prob=(0.025, 0.25), grad_scale=0.025)
        self.balance_keys = Balancer(query_head_dim * num_heads, channel_dim=-1, min_positive=0.4,
                                     max_positive=0.6, min_abs=0.0, max_abs=100.0, prob=0.025)
        self.linear_pos = ScaledLinear(pos_dim, num_heads * pos_head_dim, bias=False, initial_scale=0.05)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None):
        """x (T,B,D); pos_emb (1, 2T-1, P); key_padding_mask (B,T) True=pad; attn_mask (T,T) True=masked."""
        T, B, _ = x.shape
        H, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        y = self.in_proj(x)
        q = y[..., 0:H * dq]
        k = y[..., H * dq:2 * H * dq]
        p = y[..., 2 * H * dq:]
        k = self.whiten_keys(self.balance_keys(k))  # identity forward; gradient shaping only
        q = q.reshape(T, B, H, dq)
        k = k.reshape(T, B, H, dq)
        p = p.reshape(T, B, H, dp)

        if device_side():
            pos_proj, penalize = self._positional_term_on_device(pos_emb, T)
        else:
            # Python-random draws in icefall's order: positional skip, score penalty (training only),
            # then the 0.001 entropy-print draw icefall makes on every call.
            use_pos = (not self.training) or random.random() >= float(self.pos_emb_skip_rate)
            penalize = self.training and random.random() < 0.1
            if penalize:
                random.random()  # icefall's with_loss log draw
            random.random()
            pos_proj = None
            if use_pos:
                pos_proj = self.linear_pos(pos_emb).reshape(2 * T - 1, H, dp)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            raise TypeError(f"attn_mask must be bool, got {attn_mask.dtype}")
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (B, T):
            raise ValueError(f"key_padding_mask shape {tuple(key_padding_mask.shape)} != {(B, T)}")
        return attention_weights(q, k, p, pos_proj, key_padding_mask, attn_mask, penalize)

    def streaming_forward(self, x: Tensor, pos_emb: Tensor, cached_key: Tensor, left_context_len: int,
                          key_padding_mask: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """One chunk against the cached keys (icefall streaming_forward): x (T,B,D); pos_emb
        (1, L+2T-1, P); cached_key (L,B,H*dq); key_padding_mask (B, L+T). Returns the weights
        (H,B,T,L+T) and the new cache, the last L keys. Eval semantics: no positional skip, no
        random draws."""
        T, B, _ = x.shape
        H, dq, dp = self.num_heads, self.query_head_dim, self.pos_head_dim
        check_cache("cached_key", cached_key, (left_context_len, B, H * dq))
        y = self.in_proj(x)
        q = y[..., 0:H * dq].reshape(T, B, H, dq)
        k = torch.cat((cached_key, y[..., H * dq:2 * H * dq]), dim=0)
        p = y[..., 2 * H * dq:].reshape(T, B, H, dp)
        pos_proj = self.linear_pos(pos_emb).reshape(-1, H, dp)
        weights = streaming_attention_weights(q, k.reshape(left_context_len + T, B, H, dq), p, pos_proj,
                                              key_padding_mask)
        return weights, k[-left_context_len:]

    def _positional_term_on_device(self, pos_emb: Tensor, T: int):
        """(pos_proj, penalize) with the positional skip drawn on device: a skipped call multiplies
        pos_proj by 0, which adds exact zeros to the scores (the same forward as leaving the term
        out). The score penalty (icefall: 10% of training calls) is not applied here:
        attention_weights takes it as a Python bool, which a compiled graph would specialise on."""
        H, dp = self.num_heads, self.pos_head_dim
        pos_proj = self.linear_pos(pos_emb).reshape(2 * T - 1, H, dp)
        if self.training:
            rate = value(self.pos_emb_skip_rate)
            if isinstance(rate, Tensor) or rate != 0.0:
                pos_proj = pos_proj * keep_mask((), rate, pos_proj.device, pos_proj.dtype)
        return pos_proj, False


class SelfAttention(nn.Module):
    """out = out_proj(merge_heads(W @ split_heads(in_proj(x))))."""

    def __init__(self, embed_dim: int, num_heads: int, value_head_dim: int):
        super().__init__()
        self.num_heads = num_heads
        self.value_head_dim = value_head_dim
        self.in_proj = nn.Linear(embed_dim, num_heads * value_head_dim, bias=True)
        self.out_proj = ScaledLinear(num_heads * value_head_dim, embed_dim, bias=True, initial_scale=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights, residual: Optional[Tensor] = None) -> Tensor:
        """The attention's output, or residual + it when a residual is given."""
        T, B, _ = x.shape
        H, dv = self.num_heads, self.value_head_dim
        v = self.in_proj(x).reshape(T, B, H, dv).permute(2, 1, 0, 3)  # (H,B,T,dv)
        out = attention_apply(attn_weights, v)                      # (H,B,T,dv)
        out = out.permute(2, 1, 0, 3).reshape(T, B, H * dv)
        if residual is not None and not torch.is_grad_enabled():  # Whiten is the identity
            return residual_linear(residual, out, self.out_proj.weight, self.out_proj.bias)
        y = self.whiten(self.out_proj(out))
        return y if residual is None else residual + y

    def streaming_forward(self, x: Tensor, attn_weights: Tensor, cached_val: Tensor, left_context_len: int
                          ) -> Tuple[Tensor, Tensor]:
        """x (T,B,D), attn_weights (H,B,T,L+T), cached_val (L,B,H*dv) -> (out (T,B,D), the last L values)."""
        T, B, _ = x.shape
        H, dv = self.num_heads, self.value_head_dim
        check_cache("cached_val", cached_val, (left_context_len, B, H * dv))
        v = torch.cat((cached_val, self.in_proj(x)), dim=0)
        out = torch.matmul(attn_weights, v.reshape(left_context_len + T, B, H, dv).permute(2, 1, 0, 3))
        out = out.permute(2, 1, 0, 3).reshape(T, B, H * dv)
        return self.out_proj(out), v[-left_context_len:]


class NonlinAttention(nn.Module):
    """s, x, y = in_proj chunks; out = out_proj(((x * tanh(s)) averaged by head-0 weights) * y).
    The two products run as tanh_gate / mul_linear (self.tanh, kept for icefall's module
    tree, is not called; out_proj's parameters are used by mul_linear)."""

    def __init__(self, channels: int, hidden_channels: int):
        super().__init__()
        self.hidden_channels = hidden_channels
        self.in_proj = nn.Linear(channels, hidden_channels * 3, bias=True)
        self.balancer = Balancer(hidden_channels, channel_dim=-1,
                                 min_positive=ScheduledFloat((0.0, 0.25), (20000.0, 0.05)),
                                 max_positive=ScheduledFloat((0.0, 0.75), (20000.0, 0.95)),
                                 min_abs=0.5, max_abs=5.0)
        self.tanh = nn.Tanh()
        self.out_proj = ScaledLinear(hidden_channels, channels, bias=True, initial_scale=0.05)
        self.whiten1 = Whiten(num_groups=1, whitening_limit=whitening_schedule(5.0),
                              prob=(0.025, 0.25), grad_scale=0.01)
        self.whiten2 = Whiten(num_groups=1, whitening_limit=whitening_schedule(5.0, ratio=3.0),
                              prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, attn_weights_head0, residual: Optional[Tensor] = None) -> Tensor:
        """attn_weights_head0: attention_head0(W) or constant_attention of it (one head). Returns
        the module's output, or residual + it when a residual is given."""
        T, B, _ = x.shape
        h = self.hidden_channels
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        s = self.balancer(s)  # (the Balancer draws before whiten1, as in icefall)
        x = tanh_gate(self.whiten1(x), s)  # x * tanh(s)
        x = x.reshape(T, B, 1, h).permute(2, 1, 0, 3)          # (1,B,T,h): a single head
        x = attention_apply(attn_weights_head0, x)
        x = x.permute(2, 1, 0, 3).reshape(T, B, h)
        if residual is not None and not torch.is_grad_enabled():  # Whiten is the identity
            return residual_linear(residual, x, self.out_proj.weight, self.out_proj.bias, mul=y)
        x = self.whiten2(mul_linear(x, y, self.out_proj.weight, self.out_proj.bias))  # out_proj(x * y)
        return x if residual is None else residual + x

    def streaming_forward(self, x: Tensor, attn_weights_head0: Tensor, cached_x: Tensor, left_context_len: int
                          ) -> Tuple[Tensor, Tensor]:
        """x (T,B,D), attn_weights_head0 (1,B,T,L+T), cached_x (1,B,L,hidden): the gated values
        x * tanh(s) of the last L frames -> (out (T,B,D), new cached_x)."""
        T, B, _ = x.shape
        h = self.hidden_channels
        check_cache("cached_nonlin_attn", cached_x, (1, B, left_context_len, h))
        s, x, y = self.in_proj(x).chunk(3, dim=-1)
        x = tanh_gate(x, s).reshape(T, B, 1, h).permute(2, 1, 0, 3)  # (1,B,T,h)
        x = torch.cat((cached_x, x), dim=2)
        out = torch.matmul(attn_weights_head0, x).permute(2, 1, 0, 3).reshape(T, B, h)
        return mul_linear(out, y, self.out_proj.weight, self.out_proj.bias), x[:, :, -left_context_len:]
