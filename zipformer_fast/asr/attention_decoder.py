"""Attention-encoder-decoder (AED) head: icefall's `AttentionDecoderModel`
(egs/librispeech/ASR/zipformer/attention_decoder.py) with the same submodule names, so that an
icefall CTC/AED checkpoint loads with strict=True.

A pre-norm Transformer decoder over the encoder output: token embedding * sqrt(d) + sinusoidal
absolute positions, `num_layers` x (causal self-attention, cross-attention over the encoder frames,
Swish feed-forward), each residual with dropout, then a linear output layer. Training targets are
`[sos] + y` in, `y + [eos]` out (icefall: sos = eos = 1, the <sos/eos> piece), and the loss is
label-smoothed cross entropy summed over the batch (icefall's LabelSmoothingLoss, smoothing 0.1).

Attention runs through `torch.nn.functional.scaled_dot_product_attention` (the fused path) unless
the backend is "reference" (zipformer_fast.backend), which runs icefall's explicit
matmul-softmax-matmul. The two agree in forward and gradients, with one documented difference:
icefall's reference path applies `penalize_abs_values_gt(scores, 50, 1e-4)`, a gradient-only
penalty that acts when an attention score exceeds 50 in magnitude; the fused path never
materialises the scores and so has no such penalty.

Input rules (clear errors instead of NaNs): every encoder length must be >= 1 (a fully masked
cross-attention row has no softmax); target ids must lie in [0, vocab_size) and must not be the
sos/eos id itself (the <sos/eos> piece is added by the model, never part of a transcript). Empty
transcripts are allowed: the decoder then learns to emit eos right after sos.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..runtime import get_backend
from ..ops.attention import penalize_abs_values_gt
from .targets import Targets, pad_targets


@dataclass
class AttentionDecoderConfig:
    """icefall train.py's --attention-decoder-* defaults and get_params() constants."""
    decoder_dim: int = 512
    num_layers: int = 6
    attention_dim: int = 512
    num_heads: int = 8
    feedforward_dim: int = 2048
    sos_id: int = 1
    eos_id: int = 1
    ignore_id: int = -1
    label_smoothing: float = 0.1
    dropout: float = 0.1

    def validate(self, vocab_size: int) -> None:
        for name in ("decoder_dim", "num_layers", "attention_dim", "num_heads", "feedforward_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"attention decoder {name}={getattr(self, name)}: must be >= 1")
        if self.attention_dim % self.num_heads:
            raise ValueError(f"attention decoder attention_dim={self.attention_dim} is not a multiple "
                             f"of num_heads={self.num_heads}")
        for name in ("sos_id", "eos_id"):
            v = getattr(self, name)
            if not 0 <= v < vocab_size:
                raise ValueError(f"attention decoder {name}={v}: must be a token id in [0, {vocab_size})")
        if 0 <= self.ignore_id < vocab_size:
            raise ValueError(f"ignore_id={self.ignore_id} is a real token id; use a negative value")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={self.label_smoothing}: must be in [0, 1)")

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> Tensor:
    """(length, dim) table: sin on even channels, cos on odd ones (ESPnet / icefall layout)."""
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device)
                         * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term[: dim // 2])
    return pe.to(dtype)


class PositionalEncoding(nn.Module):
    """x * sqrt(d) + pe[:T], then dropout. No parameters or buffers (icefall keeps `pe` as a plain
    attribute, outside the state dict); the table is rebuilt per call, it is (T, d) and cheap."""

    def __init__(self, d_model: int, dropout: float = 0.1):
        super().__init__()
        self.d_model = d_model
        self.xscale = math.sqrt(d_model)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        pe = sinusoidal_positions(x.shape[1], self.d_model, device=x.device, dtype=x.dtype)
        return self.dropout(x * self.xscale + pe)


class Swish(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(x)


def attention_reference(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """icefall's explicit attention. q (B,H,T,d), k/v (B,H,S,d), allowed (B,1,T|1,S) bool."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = penalize_abs_values_gt(scores, limit=50.0, penalty=1.0e-04)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def attention_fused(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor) -> Tensor:
    """Same as attention_reference (without the score penalty) via scaled_dot_product_attention."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with icefall's parameter names (linear_q/k/v, out_proj); keys and
    values may come from a memory of another width (cross-attention). Dropout on the attention
    weights is 0 in icefall's decoder and is not implemented."""

    def __init__(self, embed_dim: int, attention_dim: int, num_heads: int,
                 memory_dim: Optional[int] = None):
        super().__init__()
        if attention_dim % num_heads:
            raise ValueError(f"attention_dim={attention_dim} is not a multiple of num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = attention_dim // num_heads
        kv_dim = embed_dim if memory_dim is None else memory_dim
        self.linear_q = nn.Linear(embed_dim, attention_dim, bias=True)
        self.linear_k = nn.Linear(kv_dim, attention_dim, bias=True)
        self.linear_v = nn.Linear(kv_dim, attention_dim, bias=True)
        self.out_proj = nn.Linear(attention_dim, embed_dim, bias=True)

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.reshape(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, d)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, allowed: Tensor) -> Tensor:
        """query (B, T, E), key/value (B, S, E or memory_dim), allowed (B, 1, T or 1, S) bool:
        True where the query may attend to the key. -> (B, T, E)."""
        q, k, v = self._heads(self.linear_q(query)), self._heads(self.linear_k(key)), self._heads(self.linear_v(value))
        attend = attention_reference if get_backend() == "reference" else attention_fused
        out = attend(q, k, v, allowed)  # (B, H, T, d)
        B, H, T, d = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * d))


class DecoderLayer(nn.Module):
    """Pre-norm: x += drop(self_attn(LN x)); x += drop(src_attn(LN x, memory)); x += drop(FF(LN x))."""

    def __init__(self, d_model: int, attention_dim: int, num_heads: int, feedforward_dim: int,
                 memory_dim: int, dropout: float = 0.1):
        super().__init__()
        self.norm_self_attn = nn.LayerNorm(d_model)
        self.self_attn = MultiHeadAttention(d_model, attention_dim, num_heads)
        self.norm_src_attn = nn.LayerNorm(d_model)
        self.src_attn = MultiHeadAttention(d_model, attention_dim, num_heads, memory_dim=memory_dim)
        self.norm_ff = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, feedforward_dim), Swish(), nn.Dropout(dropout),
                                          nn.Linear(feedforward_dim, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, self_allowed: Tensor, memory: Tensor, memory_allowed: Tensor) -> Tensor:
        h = self.norm_self_attn(x)
        x = x + self.dropout(self.self_attn(h, h, h, self_allowed))
        h = self.norm_src_attn(x)
        x = x + self.dropout(self.src_attn(h, memory, memory, memory_allowed))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class TransformerDecoder(nn.Module):
    """Token ids (B, U) + lengths and memory (B, S, memory_dim) + lengths -> logits (B, U, V)."""

    def __init__(self, vocab_size: int, d_model: int, num_layers: int, attention_dim: int, num_heads: int,
                 feedforward_dim: int, memory_dim: int, dropout: float = 0.1):
        super().__init__()
        self.embed = nn.Embedding(num_embeddings=vocab_size, embedding_dim=d_model)
        self.pos = PositionalEncoding(d_model, dropout=0.1)
        self.num_layers = num_layers
        self.layers = nn.ModuleList([
            DecoderLayer(d_model, attention_dim, num_heads, feedforward_dim, memory_dim, dropout)
            for _ in range(num_layers)])
        self.output_layer = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor, x_lens: Tensor, memory: Tensor, memory_lens: Tensor) -> Tensor:
        U, S = x.shape[1], memory.shape[1]
        dev = x.device
        # Causal and key padding for self-attention: query i sees keys j <= i with j < x_len. Key 0
        # (sos) is always visible, so no row is fully masked, padded query rows included.
        key_valid = torch.arange(U, device=dev).unsqueeze(0) < x_lens.to(dev).unsqueeze(1)      # (B, U)
        causal = torch.ones(U, U, dtype=torch.bool, device=dev).tril()
        self_allowed = (key_valid.unsqueeze(1) & causal.unsqueeze(0)).unsqueeze(1)              # (B,1,U,U)
        memory_allowed = (torch.arange(S, device=dev).unsqueeze(0)
                          < memory_lens.to(dev).unsqueeze(1))[:, None, None, :]                 # (B,1,1,S)
        h = self.pos(self.embed(x))
        for layer in self.layers:
            h = layer(h, self_allowed, memory, memory_allowed)
        return self.output_layer(h)


def label_smoothing_loss(logits: Tensor, target: Tensor, ignore_index: int = -1,
                         label_smoothing: float = 0.1, reduction: str = "sum") -> Tensor:
    """icefall's LabelSmoothingLoss: -sum_c q_c log_softmax(x)_c with q = (1 - e) one_hot + e / C,
    ignored positions contribute 0. logits (B, U, C), target (B, U). Computed in fp32 (or fp64).
    reduction "sum" | "mean" (over non-ignored positions) | "none" (per position, (B, U))."""
    if logits.ndim != 3 or target.shape != logits.shape[:2]:
        raise ValueError(f"logits (B, U, C) and target (B, U) expected, got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction={reduction!r}: expected 'none', 'mean' or 'sum'")
    x = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    B, U, C = x.shape
    # F.cross_entropy's label smoothing is the same mixture: (1 - e) * nll + e * mean_c(-log p_c).
    loss = F.cross_entropy(x.reshape(B * U, C), target.reshape(-1), ignore_index=ignore_index,
                           label_smoothing=label_smoothing, reduction="none").reshape(B, U)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (target != ignore_index).sum()


class AttentionDecoderModel(nn.Module):
    """icefall's AttentionDecoderModel: holds `decoder` (the TransformerDecoder) and computes the
    training loss (`calc_att_loss`) and per-token negative log-likelihoods for rescoring (`nll`)."""

    def __init__(self, vocab_size: int, memory_dim: int, config: Optional[AttentionDecoderConfig] = None):
        super().__init__()
        config = AttentionDecoderConfig() if config is None else config
        config.validate(vocab_size)
        self.config = config
        self.vocab_size = vocab_size
        self.sos_id, self.eos_id, self.ignore_id = config.sos_id, config.eos_id, config.ignore_id
        self.decoder = TransformerDecoder(
            vocab_size=vocab_size, d_model=config.decoder_dim, num_layers=config.num_layers,
            attention_dim=config.attention_dim, num_heads=config.num_heads,
            feedforward_dim=config.feedforward_dim, memory_dim=memory_dim, dropout=config.dropout)

    def _check(self, encoder_out: Tensor, encoder_out_lens: Tensor, padded: Tensor, lens: Tensor) -> None:
        if encoder_out.ndim != 3:
            raise ValueError(f"encoder_out must be (B, T, E), got {tuple(encoder_out.shape)}")
        B = encoder_out.shape[0]
        if encoder_out_lens.shape != (B,):
            raise ValueError(f"encoder_out_lens must be ({B},), got {tuple(encoder_out_lens.shape)}")
        if padded.shape[0] != B:
            raise ValueError(f"{padded.shape[0]} target sequences for a batch of {B}")
        if encoder_out.device.type == "meta":
            return
        valid = torch.arange(padded.shape[1], device=padded.device).unsqueeze(0) < lens.unsqueeze(1)
        ids = padded[valid]
        bad_len, bad_id, has_sos = torch.stack([
            ((encoder_out_lens < 1) | (encoder_out_lens > encoder_out.shape[1])).any(),
            ((ids < 0) | (ids >= self.vocab_size)).any(),
            ((ids == self.sos_id) | (ids == self.eos_id)).any()]).tolist()
        if bad_len:
            raise ValueError(f"encoder_out_lens {encoder_out_lens.tolist()} must lie in [1, T="
                             f"{encoder_out.shape[1]}] (cross-attention needs at least one frame)")
        if bad_id:
            raise ValueError(f"target ids must lie in [0, vocab_size={self.vocab_size})")
        if has_sos:
            raise ValueError(f"targets contain the sos/eos id ({self.sos_id}/{self.eos_id}); the model "
                             "adds <sos/eos> itself and transcripts must not contain it")

    def prepare_targets(self, targets: Targets, target_lens: Optional[Tensor] = None,
                        device=None) -> Tuple[Tensor, Tensor, Tensor]:
        """-> ys_in (B, U+1) = [sos] + y padded with eos, ys_in_lens (B,) = len + 1,
        ys_out (B, U+1) = y + [eos] padded with ignore_id (icefall's _pre_ys_in_out)."""
        padded, lens = pad_targets(targets, target_lens, pad=self.eos_id, device=device)
        B, U = padded.shape
        ys_in = torch.cat([torch.full((B, 1), self.sos_id, dtype=torch.int64, device=padded.device),
                           padded], dim=1)
        pos = torch.arange(U + 1, device=padded.device).unsqueeze(0)
        ys_out = torch.cat([padded, torch.full((B, 1), self.eos_id, dtype=torch.int64,
                                               device=padded.device)], dim=1)
        ys_out = ys_out.masked_fill(pos == lens.unsqueeze(1), self.eos_id)
        ys_out = ys_out.masked_fill(pos > lens.unsqueeze(1), self.ignore_id)
        return ys_in, lens + 1, ys_out

    def logits(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Targets,
               target_lens: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """-> (decoder logits (B, U+1, V) for [sos] + y, ys_out (B, U+1) targets)."""
        padded, lens = pad_targets(targets, target_lens, pad=self.eos_id, device=encoder_out.device)
        self._check(encoder_out, encoder_out_lens, padded, lens)
        ys_in, ys_in_lens, ys_out = self.prepare_targets(padded, lens)
        out = self.decoder(ys_in, ys_in_lens, encoder_out, encoder_out_lens)
        return out, ys_out

    def calc_att_loss(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Targets,
                      target_lens: Optional[Tensor] = None) -> Tensor:
        """Label-smoothed cross entropy of y + [eos], summed over tokens and utterances."""
        out, ys_out = self.logits(encoder_out, encoder_out_lens, targets, target_lens)
        return label_smoothing_loss(out, ys_out, ignore_index=self.ignore_id,
                                    label_smoothing=self.config.label_smoothing, reduction="sum")

    def forward(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets: Targets,
                target_lens: Optional[Tensor] = None) -> Tensor:
        return self.calc_att_loss(encoder_out, encoder_out_lens, targets, target_lens)

    def nll(self, encoder_out: Tensor, encoder_out_lens: Tensor, token_ids: Sequence[Sequence[int]]) -> Tensor:
        """Per-token negative log-likelihood (no smoothing) of each y + [eos]: (B, U+1), zero past
        each sequence's end. -nll.sum(1) is log P(y) under the decoder (used for rescoring)."""
        out, ys_out = self.logits(encoder_out, encoder_out_lens, token_ids)
        x = out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
        B, U, C = x.shape
        return F.cross_entropy(x.reshape(B * U, C), ys_out.reshape(-1), ignore_index=self.ignore_id,
                               reduction="none").reshape(B, U)


__all__: List[str] = ["AttentionDecoderConfig", "AttentionDecoderModel", "TransformerDecoder",
                      "label_smoothing_loss", "attention_fused", "attention_reference",
                      "sinusoidal_positions"]
