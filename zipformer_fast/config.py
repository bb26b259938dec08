"""ZipformerConfig: every size knob of the encoder and its ASR heads, with icefall's presets.

`ZipformerConfig.preset("S"|"M"|"L")` equals icefall's LibriSpeech recipe flags
(egs/librispeech/ASR/zipformer, RESULTS.md); "XS" equals the tiny model of
`reference/golden_XS.pt` and is what the tests use. Per-stack fields are 6-tuples (a single value is
broadcast, as icefall's `_to_int_tuple` does). `validate()` raises ValueError naming the bad field.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Tuple

NUM_STACKS = 6
_PER_STACK = (
    "num_encoder_layers", "downsampling_factor", "feedforward_dim", "num_heads", "encoder_dim",
    "encoder_unmasked_dim", "cnn_module_kernel", "query_head_dim", "value_head_dim", "pos_head_dim",
)


def _tuple6(value) -> Tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * NUM_STACKS
    if isinstance(value, str):
        value = [int(v) for v in value.split(",")]
    value = tuple(int(v) for v in value)
    return value * NUM_STACKS if len(value) == 1 else value


@dataclass
class ZipformerConfig:
    feature_dim: int = 80
    num_encoder_layers: Tuple[int, ...] = (2, 2, 3, 4, 3, 2)
    downsampling_factor: Tuple[int, ...] = (1, 2, 4, 8, 4, 2)
    feedforward_dim: Tuple[int, ...] = (512, 768, 1024, 1536, 1024, 768)
    num_heads: Tuple[int, ...] = (4, 4, 4, 8, 4, 4)
    encoder_dim: Tuple[int, ...] = (192, 256, 384, 512, 384, 256)
    encoder_unmasked_dim: Tuple[int, ...] = (192, 192, 256, 256, 256, 192)
    cnn_module_kernel: Tuple[int, ...] = (31, 31, 15, 15, 15, 31)
    query_head_dim: Tuple[int, ...] = (32,) * 6
    value_head_dim: Tuple[int, ...] = (12,) * 6
    pos_head_dim: Tuple[int, ...] = (4,) * 6
    pos_dim: int = 48
    output_downsampling_factor: int = 2
    warmup_batches: float = 4000.0
    causal: bool = False
    chunk_size: Tuple[int, ...] = (-1,)
    left_context_frames: Tuple[int, ...] = (-1,)
    decoder_dim: int = 512
    joiner_dim: int = 512
    context_size: int = 2
    vocab_size: int = 500
    # Conv-Embed channel widths (icefall's Conv2dSubsampling layer1/2/3_channels).
    embed_channels: Tuple[int, int, int] = (8, 32, 128)

    def __post_init__(self):
        for name in _PER_STACK:
            setattr(self, name, _tuple6(getattr(self, name)))
        self.chunk_size = tuple(int(c) for c in (self.chunk_size if not isinstance(self.chunk_size, int) else (self.chunk_size,)))
        lcf = self.left_context_frames
        self.left_context_frames = tuple(int(c) for c in (lcf if not isinstance(lcf, int) else (lcf,)))
        self.embed_channels = tuple(int(c) for c in self.embed_channels)
        self.validate()

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str, **overrides) -> "ZipformerConfig":
        """icefall's LibriSpeech S / M / L flags, or the tiny "XS" model of golden_XS.pt."""
        key = name.upper()
        if key not in PRESETS:
            raise ValueError(f"preset {name!r}: expected one of {sorted(PRESETS)}")
        kwargs = dict(PRESETS[key])
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def output_dim(self) -> int:
        """Width of the encoder output: max(encoder_dim)."""
        return max(self.encoder_dim)

    def replace(self, **changes) -> "ZipformerConfig":
        return dataclasses.replace(self, **changes)

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        for name in _PER_STACK:
            value = getattr(self, name)
            if len(value) != NUM_STACKS:
                raise ValueError(f"{name}: expected {NUM_STACKS} values (one per stack) or 1, got {len(value)}")
            if any(v <= 0 for v in value):
                raise ValueError(f"{name}: every value must be positive, got {value}")
        for i, ds in enumerate(self.downsampling_factor):
            if ds not in (1, 2, 4, 8):
                raise ValueError(f"downsampling_factor[{i}]={ds}: must be 1, 2, 4 or 8")
        for i, (d, u) in enumerate(zip(self.encoder_dim, self.encoder_unmasked_dim)):
            if u > d:
                raise ValueError(f"encoder_unmasked_dim[{i}]={u} exceeds encoder_dim[{i}]={d}")
        for i, k in enumerate(self.cnn_module_kernel):
            if k % 2 != 1:
                raise ValueError(f"cnn_module_kernel[{i}]={k}: must be odd")
        for i, d in enumerate(self.encoder_dim):
            if (3 * d) % 4 != 0:
                raise ValueError(f"encoder_dim[{i}]={d}: must be a multiple of 4 (non-linear attention uses 3*D/4)")
        for i, f in enumerate(self.feedforward_dim):
            if f % 4 != 0:
                raise ValueError(f"feedforward_dim[{i}]={f}: must be a multiple of 4 (FF1 uses 3F/4, FF3 5F/4)")
        if self.pos_dim % 2 != 0 or self.pos_dim < 2:
            raise ValueError(f"pos_dim={self.pos_dim}: must be even and >= 2")
        if self.output_downsampling_factor != 2:
            raise ValueError(f"output_downsampling_factor={self.output_downsampling_factor}: icefall asserts 2")
        if self.feature_dim != 80:
            # Conv-Embed's output projection (2432 = 128 * 19 inputs) is sized for 80 mel bins.
            raise ValueError(f"feature_dim={self.feature_dim}: Conv-Embed is defined for 80-dim fbank")
        if self.decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim={self.decoder_dim}: must be a multiple of 4 (decoder conv groups of 4)")
        if self.context_size < 1:
            raise ValueError(f"context_size={self.context_size}: must be >= 1")
        if self.vocab_size < 2:
            raise ValueError(f"vocab_size={self.vocab_size}: must be >= 2 (blank + one token)")
        if len(self.chunk_size) == 0 or len(self.left_context_frames) == 0:
            raise ValueError("chunk_size and left_context_frames need at least one value each")
        if not self.causal and tuple(self.chunk_size) != (-1,):
            raise ValueError(f"chunk_size={self.chunk_size}: a non-causal model must use chunk_size (-1,)")
        if self.causal:
            max_ds = max(self.downsampling_factor)
            for c in self.chunk_size:
                if c != -1 and (c <= 0 or c % max_ds != 0):
                    raise ValueError(f"chunk_size value {c}: must be -1 or a positive multiple of {max_ds}")


PRESETS = {
    "S": dict(
        num_encoder_layers=(2, 2, 2, 2, 2, 2),
        feedforward_dim=(512, 768, 768, 768, 768, 768),
        encoder_dim=(192, 256, 256, 256, 256, 256),
        encoder_unmasked_dim=(192, 192, 192, 192, 192, 192),
    ),
    "M": dict(),
    "L": dict(
        num_encoder_layers=(2, 2, 4, 5, 4, 2),
        feedforward_dim=(512, 768, 1536, 2048, 1536, 768),
        encoder_dim=(192, 256, 512, 768, 512, 256),
        encoder_unmasked_dim=(192, 192, 256, 320, 256, 192),
    ),
    # golden_XS.pt's configuration: 6 stacks of one layer, small dims, vocab 64.
    "XS": dict(
        num_encoder_layers=(1, 1, 1, 1, 1, 1),
        feedforward_dim=(96, 128, 160, 192, 160, 128),
        encoder_dim=(64, 80, 96, 128, 96, 80),
        encoder_unmasked_dim=(48, 48, 64, 64, 64, 48),
        num_heads=(2, 2, 2, 4, 2, 2),
        cnn_module_kernel=(15, 15, 7, 7, 7, 15),
        pos_dim=16,
        query_head_dim=16,
        value_head_dim=8,
        pos_head_dim=4,
        vocab_size=64,
        decoder_dim=64,
        joiner_dim=64,
    ),
}

# The base learning rates icefall's recipes use with each size.
BASE_LR = {"S": 0.04, "M": 0.045, "L": 0.045, "XS": 0.045}
