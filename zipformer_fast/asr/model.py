"""AsrModel: Conv-Embed + Zipformer2 encoder + transducer (decoder, joiner, simple projections)
and/or CTC heads, optionally with an attention-decoder (AED) head (`use_attention_decoder=True`,
zipformer_fast.asr.attention_decoder), with icefall's submodule names and registration order so
icefall checkpoints (transducer/CTC and CTC/AED) load with strict=True.

`forward_encoder(features (B, T, 80), feature_lens (B,)) -> (encoder_out (B, T', E), lens (B,))`,
T' = ceil(((T - 7) // 2) / 2). `forward(x, x_lens, y, ...)` is icefall's training forward: the loss
terms (simple, pruned, ctc, attention_decoder, cr) of one batch, computed by
zipformer_fast.asr.losses from the heads' own loss modules.

Input checks (clear ValueError / TypeError instead of icefall's asserts or a conv crash):
features must be a 3-D floating tensor with `feature_dim` channels and T >= 9 frames; lengths a 1-D
integer tensor with one entry per utterance, each in [9, T] (9 raw frames give 1 encoder frame; icefall
asserts every output length is > 0). `max(lengths) < T` is allowed (frames past the longest
utterance are padding). NaN/Inf in features is rejected. All value checks are reduced on-device and
read back with ONE host sync (icefall's subsampling already syncs once per batch for its length
assert); pass `validate_inputs=False` to skip them.

`forward_encoder` = `check_inputs` (shape checks, then the value checks with their one sync) followed
by `encode`, which never synchronises with the host (no .item()/.tolist()/nonzero, no branch on
tensor values): `encode` is the region to torch.compile or capture in a CUDA graph. When
forward_encoder itself is traced by torch.compile, the value checks are left out (a host read would
break the graph); call `check_input_values` before the compiled call to keep them.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..compile_backend import training_backend
from ..compile_settings import compile_settings
from ..config import ZipformerConfig
from ..nn.linear import ScaledLinear
from ..nn.scheduled_float import ScheduledFloat
from ..nn.subsampling import Conv2dSubsampling
from ..nn.zipformer import Zipformer2
from ..runtime import triton_available
from . import streaming_encoder
from .attention_decoder import AttentionDecoderConfig, AttentionDecoderModel
from .decoder import Decoder
from .joiner import Joiner
from .losses import AsrLosses, asr_losses

MIN_FRAMES = 9  # (T - 7) // 2 >= 1


def _recompile_limit_errors() -> tuple:
    """dynamo's error for a fullgraph function past its recompile limit (named differently across
    torch versions)."""
    import torch._dynamo.exc as exc

    return tuple(getattr(exc, name) for name in ("FailOnRecompileLimitHit", "FailOnCacheLimitHit")
                 if hasattr(exc, name))


class AsrModel(nn.Module):
    def __init__(self, config: ZipformerConfig, vocab_size: Optional[int] = None, use_transducer: bool = True,
                 use_ctc: bool = False, validate_inputs: bool = True,
                 use_attention_decoder: bool = False,
                 attention_decoder_config: Optional[AttentionDecoderConfig] = None):
        super().__init__()
        if not isinstance(config, ZipformerConfig):
            raise TypeError(f"config must be a ZipformerConfig, got {type(config).__name__}")
        if not (use_transducer or use_ctc):
            raise ValueError("AsrModel: at least one of use_transducer / use_ctc must be True")
        config.validate()
        vocab_size = config.vocab_size if vocab_size is None else int(vocab_size)
        if vocab_size < 2:
            raise ValueError(f"vocab_size={vocab_size}: must be >= 2")
        self.config = config
        self.vocab_size = vocab_size
        self.validate_inputs = validate_inputs
        encoder_dim = config.output_dim
        self.encoder_embed = Conv2dSubsampling(
            in_channels=config.feature_dim, out_channels=config.encoder_dim[0],
            layer1_channels=config.embed_channels[0], layer2_channels=config.embed_channels[1],
            layer3_channels=config.embed_channels[2], dropout=ScheduledFloat((0.0, 0.3), (20000.0, 0.1)))
        self.encoder = Zipformer2(config)
        self.use_transducer = use_transducer
        if use_transducer:
            self.decoder = Decoder(vocab_size, config.decoder_dim, blank_id=0, context_size=config.context_size)
            self.joiner = Joiner(encoder_dim, config.decoder_dim, config.joiner_dim, vocab_size)
            self.simple_am_proj = ScaledLinear(encoder_dim, vocab_size, initial_scale=0.25)
            self.simple_lm_proj = ScaledLinear(config.decoder_dim, vocab_size, initial_scale=0.25)
        self.use_ctc = use_ctc
        if use_ctc:
            self.ctc_output = nn.Sequential(nn.Dropout(p=0.1), nn.Linear(encoder_dim, vocab_size),
                                            nn.LogSoftmax(dim=-1))
        self.use_attention_decoder = use_attention_decoder
        if use_attention_decoder:
            aed = AttentionDecoderConfig() if attention_decoder_config is None else attention_decoder_config
            if 0 in (aed.sos_id, aed.eos_id):  # every AsrModel has a CTC or transducer head
                raise ValueError(f"attention decoder sos_id={aed.sos_id} / eos_id={aed.eos_id}: id 0 is "
                                 "the CTC/transducer blank; icefall uses 1 (<sos/eos>)")
            self.attention_decoder = AttentionDecoderModel(vocab_size, memory_dim=encoder_dim, config=aed)
        elif attention_decoder_config is not None:
            raise ValueError("attention_decoder_config given but use_attention_decoder=False")

    # ------------------------------------------------------------------------------ checking
    def check_inputs(self, features: Tensor, feature_lens: Tensor) -> None:
        if not isinstance(features, Tensor) or not isinstance(feature_lens, Tensor):
            raise TypeError("features and feature_lens must be torch.Tensors")
        if features.ndim != 3:
            raise ValueError(f"features must be (batch, frames, {self.config.feature_dim}), got shape "
                             f"{tuple(features.shape)}")
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got {features.dtype}")
        B, T, F = features.shape
        if F != self.config.feature_dim:
            raise ValueError(f"features have {F} channels; the model expects {self.config.feature_dim}-dim fbank")
        if T < MIN_FRAMES:
            raise ValueError(f"features have {T} frames; Conv-Embed needs at least {MIN_FRAMES}")
        if feature_lens.ndim != 1:
            raise ValueError(f"feature_lens must be 1-D (batch,), got shape {tuple(feature_lens.shape)}")
        if feature_lens.is_floating_point() or feature_lens.dtype == torch.bool or feature_lens.is_complex():
            raise TypeError(f"feature_lens must be an integer tensor, got {feature_lens.dtype}")
        if feature_lens.shape[0] != B:
            raise ValueError(f"feature_lens has {feature_lens.shape[0]} entries for a batch of {B}")
        if not self.validate_inputs or features.device.type == "meta" or torch.compiler.is_compiling():
            return
        self.check_input_values(features, feature_lens)

    def check_input_values(self, features: Tensor, feature_lens: Tensor) -> None:
        """The value checks (lengths within [9, T], finite features): one host sync."""
        T = features.shape[1]
        too_long, too_short, not_finite = torch.stack([
            (feature_lens > T).any(), (feature_lens < MIN_FRAMES).any(),
            ~torch.isfinite(features).all()]).tolist()  # one host sync
        if too_long:
            raise ValueError(f"feature_lens {feature_lens.tolist()} exceed the padded length T={T}")
        if too_short:
            raise ValueError(f"feature_lens {feature_lens.tolist()}: every utterance needs >= {MIN_FRAMES} frames")
        if not_finite:
            raise ValueError("features contain NaN or Inf")

    # ------------------------------------------------------------------------------- forward
    def forward_encoder(self, features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, T, 80), (B,) -> encoder_out (B, T', E), encoder_out_lens (B,)."""
        self.check_inputs(features, feature_lens)
        return self.encode(features, feature_lens)

    def encode(self, features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """forward_encoder without the input checks: no host synchronisation (compile / CUDA-graph this)."""
        x, x_lens = self.encoder_embed(features, feature_lens)
        return self._encode_embedded(x, x_lens)

    def _encode_embedded(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """The encoder stacks on Conv-Embed's output (B, T1, D0)."""
        T1 = x.shape[1]
        src_key_padding_mask = torch.arange(T1, device=x.device).unsqueeze(0) >= x_lens.unsqueeze(1)
        x = x.permute(1, 0, 2)  # (T1, B, D0)
        out, out_lens = self.encoder(x, x_lens, src_key_padding_mask)
        return out.permute(1, 0, 2), out_lens

    def compile_encoder(self, compile_embed: bool = True, **compile_kwargs) -> None:
        """Replace `encode` (not the input checks) by two torch.compile'd regions, Conv-Embed and
        the encoder stacks, each fullgraph=True, dynamic=True (**compile_kwargs override). Two
        regions, not one: with Conv-Embed's output length as an expression of the input's
        ((T - 7) // 2), inductor's (torch 2.13) symbolic-shape reasoning fails on the training
        graph of the stacks ("Invalid ranges" in a view of the non-linear attention), while a
        fresh size symbol compiles. The channel dims are compiled static (they are the model's):
        a symbolic one makes inductor fail to order the strides of the first convolution's saved
        input ("cannot determine truth value of Relational"). The whole model still traces as one
        graph (tests/test_compile.py). The calls run under compile_settings() (floats specialised:
        one trace per compilation instead of two). The model must not be deep-copied afterwards
        (the compiled functions are instance attributes); state_dict() is unaffected.
        compile_embed=False leaves Conv-Embed eager.

        Plain inductor (the default backend, no mode / options) is compile_backend's
        inductor_keeping_saved_strides: with torch's own, AOTAutograd re-strides saved
        activations to inductor's layouts when it compiles the backward, which pins batch and
        time, so every new batch shape recompiled the training graph (torch 2.13; the other pin,
        inductor's convolution_backward lowering, is ops.traced_conv's reason).

        A region whose compilations reach dynamo's recompile limit (fullgraph=True makes that an
        error) runs eagerly from then on, with a warning: the same numbers, eager speed."""
        kwargs = dict(fullgraph=True, dynamic=True)
        kwargs.update(compile_kwargs)
        kwargs["backend"] = training_backend(kwargs.get("backend", "inductor"), kwargs)
        triton_available()  # fill its cache now, or the first compiled call guards on it being empty
        regions = {"Conv-Embed": torch.compile(self.encoder_embed, **kwargs) if compile_embed else self.encoder_embed,
                   "stacks": torch.compile(self._encode_embedded, **kwargs)}
        eager = {"Conv-Embed": self.encoder_embed, "stacks": self._encode_embedded}

        def run(name: str, *args):
            fn = regions[name]
            try:
                return fn(*args)
            except _recompile_limit_errors() as error:
                if fn is eager[name]:
                    raise
                warnings.warn(f"compile_encoder: the compiled {name} region reached dynamo's recompile limit "
                              f"({type(error).__name__}); it runs eagerly from now on (docs/known_issues.md)")
                regions[name] = eager[name]
                return eager[name](*args)

        def encode(features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
            torch._dynamo.mark_static(features, 2)
            with compile_settings():  # one trace per compilation, not two (see compile_settings)
                x, x_lens = run("Conv-Embed", features, feature_lens)
                torch._dynamo.mark_static(x, 2)
                return run("stacks", x, x_lens)

        self.encode = encode

    def forward(self, x: Tensor, x_lens: Tensor, y, prune_range: int = 5, am_scale: float = 0.0,
                lm_scale: float = 0.0, use_cr_ctc: bool = False, use_spec_aug: bool = False,
                spec_augment=None, supervision_segments: Optional[Tensor] = None,
                time_warp_factor: Optional[int] = 80) -> AsrLosses:
        """icefall's AsrModel.forward: features x (N, T, 80) with lengths x_lens (N,) and the
        transcripts y (token-id lists or a two-axis k2.RaggedTensor) ->
        AsrLosses(simple_loss, pruned_loss, ctc_loss, attention_decoder_loss, cr_loss), each summed
        over the batch; a head the model lacks gives a zero. prune_range / am_scale / lm_scale: the
        pruned RNN-T settings (icefall train.py passes lm_scale=0.25). use_cr_ctc: run the batch as
        two views (use_spec_aug: augmented by spec_augment, a CrCtcAugment or icefall's
        SpecAugment after a time warp by time_warp_factor over supervision_segments) and halve
        every term. The encoder alone is `forward_encoder`. See zipformer_fast.asr.losses."""
        return asr_losses(self, x, x_lens, y, prune_range=prune_range, am_scale=am_scale,
                          lm_scale=lm_scale, use_cr_ctc=use_cr_ctc, use_spec_aug=use_spec_aug,
                          spec_augment=spec_augment, supervision_segments=supervision_segments,
                          time_warp_factor=time_warp_factor)

    # ----------------------------------------------------------------------------- streaming
    def get_init_states(self, batch_size: int = 1, device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Zero streaming states of the whole encoder (see zipformer_fast.asr.streaming_encoder)."""
        return streaming_encoder.get_init_states(self, batch_size, device)

    def streaming_forward(self, features: Tensor, feature_lens: Tensor, states: List[Tensor]
                          ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """One chunk of (B, 2 * chunk_size + 13, 80) features -> (encoder_out (B, chunk_size // 2, E),
        lengths, new states); a causal model, chunk size and left context set by
        encoder.configure_streaming (see zipformer_fast.asr.streaming_encoder)."""
        return streaming_encoder.streaming_forward(self, features, feature_lens, states)
    def forward_attention_decoder(self, encoder_out: Tensor, encoder_out_lens: Tensor, targets,
                                  target_lens: Optional[Tensor] = None) -> Tensor:
        """Label-smoothed attention-decoder loss, summed over the batch (icefall calc_att_loss)."""
        if not self.use_attention_decoder:
            raise RuntimeError("this AsrModel was built with use_attention_decoder=False")
        return self.attention_decoder.calc_att_loss(encoder_out, encoder_out_lens, targets, target_lens)

    def ctc_log_probs(self, encoder_out: Tensor) -> Tensor:
        if not self.use_ctc:
            raise RuntimeError("this AsrModel was built with use_ctc=False")
        return self.ctc_output(encoder_out)
