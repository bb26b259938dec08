"""nn.Module views of an AsrModel with exactly the inputs and outputs of icefall's exported graphs
(egs/librispeech/ASR/zipformer/export-onnx.py: OnnxEncoder, OnnxDecoder, OnnxJoiner; export-onnx-ctc.py:
OnnxModel). The joiner's input projections move into the encoder and decoder graphs, as icefall
does, so that sherpa-onnx projects each frame and each context once.

These wrappers call the modules directly (no AsrModel.check_inputs: its value checks read tensors
back to the host, which a traced graph cannot keep) and build the padding mask from x_lens.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor, nn


def _encode(model, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
    """Conv-Embed + Zipformer2 over padded fbank: (N, T, 80), (N,) -> (N, T', E), (N,)."""
    h, h_lens = model.encoder_embed(x, x_lens)
    mask = torch.arange(h.shape[1], device=h.device).unsqueeze(0) >= h_lens.unsqueeze(1)
    out, out_lens = model.encoder(h.permute(1, 0, 2), h_lens, mask)
    return out.permute(1, 0, 2), out_lens


class OnnxEncoder(nn.Module):
    """x (N, T, 80) float, x_lens (N,) int64 -> encoder_out (N, T', joiner_dim), encoder_out_lens (N,)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        out, out_lens = _encode(self.model, x, x_lens)
        return self.model.joiner.encoder_proj(out), out_lens


class OnnxDecoder(nn.Module):
    """y (N, context_size) int64 -> decoder_out (N, joiner_dim). Ids < 0 embed to zero (the context
    placeholders sherpa-onnx and our searches start with)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, y: Tensor) -> Tensor:
        out = self.model.decoder(y, need_pad=False).squeeze(1)
        return self.model.joiner.decoder_proj(out)


class OnnxJoiner(nn.Module):
    """Projected encoder_out (N, joiner_dim), decoder_out (N, joiner_dim) -> logit (N, vocab)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, encoder_out: Tensor, decoder_out: Tensor) -> Tensor:
        return self.model.joiner(encoder_out, decoder_out, project_input=False)


class OnnxCtcModel(nn.Module):
    """x (N, T, 80), x_lens (N,) -> log_probs (N, T', vocab), log_probs_len (N,)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        out, out_lens = _encode(self.model, x, x_lens)
        return self.model.ctc_output(out), out_lens
