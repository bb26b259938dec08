"""Transducer joiner (icefall joiner.py): output_linear(tanh(encoder_proj(e) + decoder_proj(d))).

With project_input=False the caller has already applied encoder_proj / decoder_proj (icefall does
this before pruning, to project each frame/token once).
"""
from __future__ import annotations

from torch import Tensor, nn

import torch

from ..nn.linear import ScaledLinear


class Joiner(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = ScaledLinear(encoder_dim, joiner_dim, initial_scale=0.25)
        self.decoder_proj = ScaledLinear(decoder_dim, joiner_dim, initial_scale=0.25)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)

    def forward(self, encoder_out: Tensor, decoder_out: Tensor, project_input: bool = True) -> Tensor:
        if encoder_out.ndim != decoder_out.ndim:
            raise ValueError(f"Joiner: encoder_out {tuple(encoder_out.shape)} and decoder_out "
                             f"{tuple(decoder_out.shape)} must have the same number of dims")
        if project_input:
            logit = self.encoder_proj(encoder_out) + self.decoder_proj(decoder_out)
        else:
            logit = encoder_out + decoder_out
        return self.output_linear(torch.tanh(logit))
