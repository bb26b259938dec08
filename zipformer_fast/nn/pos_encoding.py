"""CompactRelPositionalEncoding (icefall): a log-compressed, atan-bounded Fourier embedding of the
relative offset, with the last column set to 1 (a bias). No parameters and no buffers: the table is
a plain attribute, rebuilt (on the input's device) when a longer sequence arrives, so it never
appears in checkpoints.

Row n of forward(x)'s output holds offset n - (T - 1) - left_context_len ... i.e. offsets
-(T+Lc-1) .. (T-1), ascending; shape (1, 2T-1+Lc, P).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .dropout import Dropout2
from .scheduled_float import FloatLike


def compact_rel_pos_table(num_offsets: int, embed_dim: int, length_factor: float, device) -> Tensor:
    """(2N-1, P) table for offsets -(N-1)..(N-1), computed in fp32 as icefall does."""
    x = torch.arange(-(num_offsets - 1), num_offsets, device=device).to(torch.float32).unsqueeze(1)
    freqs = 1 + torch.arange(embed_dim // 2, device=device)
    c = embed_dim ** 0.5  # compression length: slope 1 at the origin
    x_compressed = c * x.sign() * ((x.abs() + c).log() - math.log(c))
    length_scale = length_factor * embed_dim / (2.0 * math.pi)
    x_atan = (x_compressed / length_scale).atan()
    pe = torch.zeros(x.shape[0], embed_dim, device=device)
    pe[:, 0::2] = (x_atan * freqs).cos()
    pe[:, 1::2] = (x_atan * freqs).sin()
    pe[:, -1] = 1.0
    return pe


class CompactRelPositionalEncoding(nn.Module):
    def __init__(self, embed_dim: int, dropout_rate: FloatLike, max_len: int = 1000, length_factor: float = 1.0):
        super().__init__()
        if embed_dim % 2 != 0:
            raise ValueError(f"CompactRelPositionalEncoding: embed_dim={embed_dim} must be even")
        if length_factor < 1.0:
            raise ValueError(f"CompactRelPositionalEncoding: length_factor={length_factor} must be >= 1")
        self.embed_dim = embed_dim
        self.length_factor = length_factor
        self.dropout = Dropout2(dropout_rate)
        self.max_len = max_len
        self.pe = None  # attribute, not a buffer

    def _table(self, needed: int, like: Tensor) -> Tensor:
        if torch.compiler.is_compiling():
            # No cache while tracing: writing self.pe would be a side effect the graph guards on.
            # Each row depends only on its own offset, so the values equal the cached table's.
            return compact_rel_pos_table(needed, self.embed_dim, self.length_factor, like.device).to(like.dtype)
        pe = self.pe
        if pe is None or pe.size(0) < 2 * needed - 1 or pe.device != like.device:
            pe = compact_rel_pos_table(max(needed, self.max_len), self.embed_dim, self.length_factor, like.device)
            self.pe = pe
        return pe.to(dtype=like.dtype)

    def forward(self, x: Tensor, left_context_len: int = 0) -> Tensor:
        """x: (T, B, *). Returns (1, 2T-1+left_context_len, P)."""
        T = x.size(0)
        pe = self._table(T + left_context_len, x)
        center = pe.size(0) // 2
        pos_emb = pe[center - (T + left_context_len) + 1: center + T].unsqueeze(0)
        return self.dropout(pos_emb)
