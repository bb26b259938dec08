"""Zipformer2EncoderLayer (icefall egs/librispeech/ASR/zipformer/zipformer.py at icefall 36e0420).

Submodules are registered in icefall's order (it defines the state-dict order). Forward:
shared attention weights from the layer input; FF1; non-linear attention (head 0); SA1; Conv1;
FF2; mid bypass; SA2; Conv2; FF3; BiasNorm; bypass (layer drop). Training adds per-sequence skips
whose rates are ScheduledFloats (0 in eval). Python-random draws follow icefall's order.
"""
from __future__ import annotations

import random
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops.attention import attention_head0, constant_attention
from .attention import NonlinAttention, RelPositionMultiheadAttentionWeights, SelfAttention
from .bias_norm import BiasNorm
from .bypass import BypassModule
from .convolution import ConvolutionModule
from .feedforward import FeedforwardModule
from .grad_shapers import Balancer, Whiten, whitening_schedule
from .randomness import device_side, keep_mask
from .scheduled_float import FloatLike, ScheduledFloat, value


def _sf(*points, default=0.0) -> ScheduledFloat:
    return ScheduledFloat(*points, default=default)


class Zipformer2EncoderLayer(nn.Module):
    def __init__(self, embed_dim: int, pos_dim: int, num_heads: int, query_head_dim: int, pos_head_dim: int,
                 value_head_dim: int, feedforward_dim: int, dropout: FloatLike = 0.1, cnn_module_kernel: int = 31,
                 causal: bool = False):
        super().__init__()
        self.embed_dim = embed_dim
        self.bypass = BypassModule(embed_dim, skip_rate=_sf((0.0, 0.5), (4000.0, 0.02)), straight_through_rate=0)
        self.bypass_mid = BypassModule(embed_dim, straight_through_rate=0)
        self.attention_skip_rate = _sf((0.0, 0.2), (4000.0, 0.05), (16000, 0.0))
        self.conv_skip_rate = _sf((0.0, 0.2), (4000.0, 0.05), (16000, 0.0))
        self.ff2_skip_rate = _sf((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.ff3_skip_rate = _sf((0.0, 0.1), (4000.0, 0.01), (50000.0, 0.0))
        self.const_attention_rate = _sf((0.0, 0.25), (4000.0, 0.025))
        self.self_attn_weights = RelPositionMultiheadAttentionWeights(
            embed_dim, pos_dim=pos_dim, num_heads=num_heads, query_head_dim=query_head_dim,
            pos_head_dim=pos_head_dim, dropout=0.0)
        self.self_attn1 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.self_attn2 = SelfAttention(embed_dim, num_heads, value_head_dim)
        self.feed_forward1 = FeedforwardModule(embed_dim, (feedforward_dim * 3) // 4, dropout)
        self.feed_forward2 = FeedforwardModule(embed_dim, feedforward_dim, dropout)
        self.feed_forward3 = FeedforwardModule(embed_dim, (feedforward_dim * 5) // 4, dropout)
        self.nonlin_attention = NonlinAttention(embed_dim, hidden_channels=3 * embed_dim // 4)
        self.conv_module1 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        self.conv_module2 = ConvolutionModule(embed_dim, cnn_module_kernel, causal=causal)
        # Unused in forward ("TODO: remove it" in icefall) but present in every checkpoint.
        self.bypass_scale = nn.Parameter(torch.full((embed_dim,), 0.5))
        self.norm = BiasNorm(embed_dim)
        self.balancer1 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55,
                                  min_abs=0.2, max_abs=4.0)
        self.balancer_na = Balancer(embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
                                    min_abs=ScheduledFloat((0.0, 0.004), (4000.0, 0.02)), prob=0.05)
        self.balancer_ff2 = Balancer(embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
                                     min_abs=_sf((0.0, 0.0), (4000.0, 0.1)), max_abs=2.0, prob=0.05)
        self.balancer_ff3 = Balancer(embed_dim, channel_dim=-1, min_positive=0.3, max_positive=0.7,
                                     min_abs=_sf((0.0, 0.0), (4000.0, 0.2)), max_abs=4.0, prob=0.05)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(4.0, ratio=3.0),
                             prob=(0.025, 0.25), grad_scale=0.01)
        self.balancer2 = Balancer(embed_dim, channel_dim=-1, min_positive=0.45, max_positive=0.55,
                                  min_abs=0.1, max_abs=4.0)

    def _sequence_mask(self, x: Tensor, rate) -> Optional[Tensor]:
        """(B, 1) keep mask (0/1 in x's dtype) or None when nothing is dropped. `rate` is a float,
        or under device-side randomness a 0-dim tensor (always drawn)."""
        if not self.training or torch.jit.is_scripting() or torch.jit.is_tracing():
            return None
        if isinstance(rate, Tensor):
            return keep_mask((x.shape[1], 1), rate, x.device, x.dtype)
        if rate == 0.0:
            return None
        return (torch.rand(x.shape[1], 1, device=x.device) > rate).to(x.dtype)

    def _rate(self, rate: FloatLike):
        """A skip rate as forward uses it: 0 in eval, else float or (device-side) tensor."""
        return value(rate) if self.training else 0.0

    @staticmethod
    def _masked(y: Tensor, mask: Optional[Tensor]) -> Tensor:
        return y if mask is None else y * mask

    def forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int = -1, attn_mask: Optional[Tensor] = None,
                src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        """src (T, B, D); pos_emb (1, 2T-1, P)."""
        if not self.training and not torch.is_grad_enabled():
            return self._inference_forward(src, pos_emb, chunk_size, attn_mask, src_key_padding_mask)
        src_orig = src
        attention_skip_rate = self._rate(self.attention_skip_rate)
        attn_weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask,
                                              key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward1(src)
        att_mask = self._sequence_mask(src, attention_skip_rate)

        head0 = attention_head0(attn_weights)
        # icefall zipformer.py Zipformer2EncoderLayer.forward: in training, with probability
        # const_attention_rate, head 0 of the weights becomes uniform over the unmasked keys (pushes
        # the non-linear attention towards averaging over time).
        if self.training:
            if device_side():
                fire = ~keep_mask((), value(self.const_attention_rate), head0.device)
                head0 = torch.where(fire, constant_attention(head0), head0)
            elif random.random() < float(self.const_attention_rate):
                head0 = constant_attention(head0)

        na = self.balancer_na(self.nonlin_attention(src, head0))
        src = src + self._masked(na, att_mask)
        src = src + self._masked(self.self_attn1(src, attn_weights), att_mask)

        conv_skip_rate = self._rate(self.conv_skip_rate)
        conv = self.conv_module1(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = src + self._masked(conv, self._sequence_mask(src, conv_skip_rate))

        ff2_skip_rate = self._rate(self.ff2_skip_rate)
        ff2 = self.balancer_ff2(self.feed_forward2(src))
        src = src + self._masked(ff2, self._sequence_mask(src, ff2_skip_rate))

        src = self.bypass_mid(src_orig, src)

        src = src + self._masked(self.self_attn2(src, attn_weights), att_mask)

        conv_skip_rate = self._rate(self.conv_skip_rate)
        conv = self.conv_module2(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask)
        src = src + self._masked(conv, self._sequence_mask(src, conv_skip_rate))

        ff3_skip_rate = self._rate(self.ff3_skip_rate)
        ff3 = self.balancer_ff3(self.feed_forward3(src))
        src = src + self._masked(ff3, self._sequence_mask(src, ff3_skip_rate))

        src = self.bypass(src_orig, self.balancer1(src), norm=self.norm)  # bypass(src_orig, norm(src))
        return self.whiten(self.balancer2(src))

    def _inference_forward(self, src: Tensor, pos_emb: Tensor, chunk_size: int, attn_mask: Optional[Tensor],
                           src_key_padding_mask: Optional[Tensor]) -> Tensor:
        """forward() in eval mode without autograd: no skip masks, and Balancer / Whiten are
        identities, so each branch's residual add rides in the branch's output projection
        (ops.residual_linear: one GEMM per branch instead of a GEMM and an add)."""
        src_orig = src
        attn_weights = self.self_attn_weights(src, pos_emb=pos_emb, attn_mask=attn_mask,
                                              key_padding_mask=src_key_padding_mask)
        src = self.feed_forward1(src, residual=src)
        src = self.nonlin_attention(src, attention_head0(attn_weights), residual=src)
        src = self.self_attn1(src, attn_weights, residual=src)
        src = self.conv_module1(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask, residual=src)
        src = self.feed_forward2(src, residual=src)
        src = self.bypass_mid(src_orig, src)
        src = self.self_attn2(src, attn_weights, residual=src)
        src = self.conv_module2(src, chunk_size=chunk_size, src_key_padding_mask=src_key_padding_mask, residual=src)
        src = self.feed_forward3(src, residual=src)
        return self.bypass(src_orig, src, norm=self.norm)

    def streaming_forward(self, src: Tensor, pos_emb: Tensor, cached_key: Tensor, cached_nonlin_attn: Tensor,
                          cached_val1: Tensor, cached_val2: Tensor, cached_conv1: Tensor, cached_conv2: Tensor,
                          left_context_len: int, src_key_padding_mask: Tensor) -> Tuple[Tensor, ...]:
        """One chunk (icefall Zipformer2EncoderLayer.streaming_forward), eval semantics.

        src (T, B, D); pos_emb (1, L+2T-1, P); src_key_padding_mask (B, L+T), True = ignore (padding,
        and cached frames not yet filled). States, L = left_context_len: cached_key (L, B, H*dq),
        cached_nonlin_attn (1, B, L, 3D/4), cached_val1/2 (L, B, H*dv), cached_conv1/2 (B, D, K//2).
        Returns (out, the six new states in the same order)."""
        src_orig = src
        attn_weights, cached_key = self.self_attn_weights.streaming_forward(
            src, pos_emb=pos_emb, cached_key=cached_key, left_context_len=left_context_len,
            key_padding_mask=src_key_padding_mask)
        src = src + self.feed_forward1(src)
        na, cached_nonlin_attn = self.nonlin_attention.streaming_forward(
            src, attn_weights[0:1], cached_x=cached_nonlin_attn, left_context_len=left_context_len)
        src = src + na
        sa, cached_val1 = self.self_attn1.streaming_forward(
            src, attn_weights, cached_val=cached_val1, left_context_len=left_context_len)
        src = src + sa
        chunk_mask = src_key_padding_mask[:, left_context_len:]
        conv, cached_conv1 = self.conv_module1.streaming_forward(src, cache=cached_conv1,
                                                                 src_key_padding_mask=chunk_mask)
        src = src + conv
        src = src + self.feed_forward2(src)
        src = self.bypass_mid(src_orig, src)
        sa, cached_val2 = self.self_attn2.streaming_forward(
            src, attn_weights, cached_val=cached_val2, left_context_len=left_context_len)
        src = src + sa
        conv, cached_conv2 = self.conv_module2.streaming_forward(src, cache=cached_conv2,
                                                                 src_key_padding_mask=chunk_mask)
        src = src + conv
        src = src + self.feed_forward3(src)
        src = self.bypass(src_orig, src, norm=self.norm)  # bypass(src_orig, norm(src))
        return src, cached_key, cached_nonlin_attn, cached_val1, cached_val2, cached_conv1, cached_conv2
