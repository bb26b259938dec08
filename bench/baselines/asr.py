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

from zipformer_fast.asr.decoder import Decoder
from zipformer_fast.asr.joiner import Joiner
from zipformer_fast.nn.linear import ScaledLinear
from .conformer import ConformerConfig, ConformerEncoder


class ConformerAsrModel(nn.Module):
    def __init__(self, cfg: ConformerConfig, use_transducer: bool = True):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConformerEncoder(cfg)
        if use_transducer:
            # The Zipformer AsrModel's own heads: the same shapes icefall gave its Conformer.
            self.decoder = Decoder(cfg.vocab_size, cfg.decoder_dim, blank_id=0, context_size=cfg.context_size)
            self.joiner = Joiner(cfg.d_model, cfg.decoder_dim, cfg.joiner_dim, cfg.vocab_size)
            self.simple_am_proj = ScaledLinear(cfg.d_model, cfg.vocab_size, initial_scale=0.25)
            self.simple_lm_proj = ScaledLinear(cfg.decoder_dim, cfg.vocab_size, initial_scale=0.25)

    def forward_encoder(self, features: Tensor, feature_lens: Tensor):
        """(B, T, 80), (B,) -> encoder output (B, T', d_model), output lengths (B,)."""
        return self.encoder(features, feature_lens)
