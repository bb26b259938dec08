"""Stateless transducer prediction network (icefall decoder.py): embedding -> (left-pad) grouped
Conv1d over the last `context_size` tokens (groups of 4 channels, no bias) -> ReLU.

Negative ids (used by beam search at utterance start) embed to zero.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.grad_shapers import Balancer


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, decoder_dim: int, blank_id: int = 0, context_size: int = 2):
        super().__init__()
        if context_size < 1:
            raise ValueError(f"context_size={context_size} must be >= 1")
        if decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim={decoder_dim} must be a multiple of 4 (conv groups of 4)")
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.balancer = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                 min_abs=0.5, max_abs=1.0, prob=0.05)
        self.blank_id = blank_id
        self.context_size = context_size
        self.vocab_size = vocab_size
        if context_size > 1:
            self.conv = nn.Conv1d(decoder_dim, decoder_dim, kernel_size=context_size, padding=0,
                                  groups=decoder_dim // 4, bias=False)
            self.balancer2 = Balancer(decoder_dim, channel_dim=-1, min_positive=0.0, max_positive=1.0,
                                      min_abs=0.5, max_abs=1.0, prob=0.05)
        else:
            self.conv = nn.Identity()
            self.balancer2 = nn.Identity()

    def forward(self, y: Tensor, need_pad: bool = True) -> Tensor:
        """y (N, U) token ids -> (N, U, decoder_dim). need_pad=False: y holds exactly context_size ids."""
        if y.ndim != 2:
            raise ValueError(f"Decoder: expected (N, U) token ids, got shape {tuple(y.shape)}")
        y = y.to(torch.int64)
        out = self.embedding(y.clamp(min=0)) * (y >= 0).unsqueeze(-1)
        out = self.balancer(out)
        if self.context_size > 1:
            out = out.permute(0, 2, 1)
            if need_pad:
                out = F.pad(out, pad=(self.context_size - 1, 0))
            elif out.size(-1) != self.context_size:
                raise ValueError(f"Decoder: need_pad=False expects {self.context_size} ids, got {out.size(-1)}")
            out = self.conv(out).permute(0, 2, 1)
            out = self.balancer2(F.relu(out))
        return out
