"""ConformerAsrModel: the Conformer encoder with icefall's pruned-transducer heads.

The heads exist so parameter counts compare with the paper's Table 2 (which counts the whole
transducer: encoder, stateless decoder, joiner and the two "simple" projections of the pruned
RNN-T loss) and so the model has the same `forward_encoder` entry point as the Zipformer
`AsrModel`; the benchmarks time only `forward_encoder`. Training the baseline is out of scope.

Heads (icefall shapes): decoder = Embedding(V, Dd) + grouped Conv1d(Dd, Dd, context, groups
Dd/4, no bias); joiner = Linear(E, J), Linear(Dd, J), Linear(J, V); simple_am_proj = Linear(E, V),
simple_lm_proj = Linear(Dd, V).
"""
from __future__ import annotations

from torch import Tensor, nn

from .conformer import ConformerConfig, ConformerEncoder


class _StatelessDecoder(nn.Module):
    def __init__(self, vocab_size: int, decoder_dim: int, context_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, decoder_dim)
        self.conv = nn.Conv1d(decoder_dim, decoder_dim, context_size, groups=decoder_dim // 4, bias=False)


class _Joiner(nn.Module):
    def __init__(self, encoder_dim: int, decoder_dim: int, joiner_dim: int, vocab_size: int):
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, joiner_dim)
        self.decoder_proj = nn.Linear(decoder_dim, joiner_dim)
        self.output_linear = nn.Linear(joiner_dim, vocab_size)


class ConformerAsrModel(nn.Module):
    def __init__(self, cfg: ConformerConfig, use_transducer: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConformerEncoder(cfg)
        if use_transducer:
            self.decoder = _StatelessDecoder(cfg.vocab_size, cfg.decoder_dim, cfg.context_size)
            self.joiner = _Joiner(cfg.d_model, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size)
            self.simple_am_proj = nn.Linear(cfg.d_model, cfg.vocab_size)
            self.simple_lm_proj = nn.Linear(cfg.decoder_dim, cfg.vocab_size)

    def forward_encoder(self, features: Tensor, feature_lens: Tensor):
        """(B, T, 80), (B,) -> encoder output (B, T', d_model), output lengths (B,)."""
        return self.encoder(features, feature_lens)
