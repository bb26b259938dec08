"""One Zipformer stack (Zipformer2Encoder), its downsampled wrapper, and SimpleDownsample /
SimpleUpsample (icefall egs/librispeech/ASR/zipformer/zipformer.py at icefall 36e0420).

Zipformer2Encoder deep-copies one template layer num_layers times (so, as in icefall, the layers of a
stack start from identical weights) and overrides each layer's bypass skip rate with the layer-drop
schedule: 0.5 until its warm-up slot, then a linear ramp to final_layerdrop_rate, kept for good.
"""
from __future__ import annotations

import copy
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.bypass import upsample_bypass
from ..ops.downsample import simple_downsample, simple_upsample
from .bypass import BypassModule
from .pos_encoding import CompactRelPositionalEncoding
from .scheduled_float import FloatLike, ScheduledFloat


class Zipformer2Encoder(nn.Module):
    def __init__(self, encoder_layer: nn.Module, num_layers: int, pos_dim: int, dropout: FloatLike,
                 warmup_begin: float, warmup_end: float, initial_layerdrop_rate: float = 0.5,
                 final_layerdrop_rate: float = 0.05):
        super().__init__()
        if not 0 <= warmup_begin <= warmup_end:
            raise ValueError(f"warmup window [{warmup_begin}, {warmup_end}] is not ordered")
        self.encoder_pos = CompactRelPositionalEncoding(pos_dim, dropout_rate=0.15, length_factor=1.0)
        self.layers = nn.ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        delta = (warmup_end - warmup_begin) / num_layers
        begin = warmup_begin
        for layer in self.layers:
            layer.bypass.skip_rate = ScheduledFloat((begin, initial_layerdrop_rate),
                                                    (begin + delta, final_layerdrop_rate), default=0.0)
            begin += delta

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Union[Tensor, float] = 1.0,
                attn_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        pos_emb = self.encoder_pos(src)
        out = src * feature_mask
        for layer in self.layers:
            out = layer(out, pos_emb, chunk_size=chunk_size, attn_mask=attn_mask,
                        src_key_padding_mask=src_key_padding_mask)
            out = out * feature_mask
        return out

    def streaming_forward(self, src: Tensor, states: List[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """One chunk through every layer; states: 6 per layer (see Zipformer2EncoderLayer.streaming_forward)."""
        if len(states) != 6 * self.num_layers:
            raise ValueError(f"Zipformer2Encoder: {len(states)} states for {self.num_layers} layers (expected "
                             f"{6 * self.num_layers})")
        pos_emb = self.encoder_pos(src, left_context_len)
        out = src
        new_states: List[Tensor] = []
        for i, layer in enumerate(self.layers):
            out, *layer_states = layer.streaming_forward(out, pos_emb, *states[6 * i:6 * (i + 1)],
                                                         left_context_len=left_context_len,
                                                         src_key_padding_mask=src_key_padding_mask)
            new_states += layer_states
        return out, new_states


class SimpleDownsample(nn.Module):
    """Softmax(bias)-weighted sum over groups of `downsample` frames (right-padded by repeating the
    last frame). `dropout` is stored but unused, as in icefall."""

    def __init__(self, channels: int, downsample: int, dropout: FloatLike = 0.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(downsample))
        self.dropout = copy.deepcopy(dropout)
        self.downsample = downsample

    def forward(self, src: Tensor) -> Tensor:
        return simple_downsample(src, self.bias)


class SimpleUpsample(nn.Module):
    """Repeat every frame `upsample` times (no parameters)."""

    def __init__(self, num_channels: int, upsample: int):
        super().__init__()
        self.upsample = upsample

    def forward(self, src: Tensor, length: Optional[int] = None) -> Tensor:
        if length is None:
            length = src.shape[0] * self.upsample
        return simple_upsample(src, self.upsample, length)


class DownsampledZipformer2Encoder(nn.Module):
    """downsample -> stack at the lower rate -> upsample -> truncate -> out_combiner bypass."""

    def __init__(self, encoder: nn.Module, dim: int, downsample: int, dropout: FloatLike):
        super().__init__()
        self.downsample_factor = downsample
        self.downsample = SimpleDownsample(dim, downsample, dropout)
        self.num_layers = encoder.num_layers
        self.encoder = encoder
        self.upsample = SimpleUpsample(dim, downsample)
        self.out_combiner = BypassModule(dim, straight_through_rate=0)

    def forward(self, src: Tensor, chunk_size: int = -1, feature_mask: Union[Tensor, float] = 1.0,
                attn_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None) -> Tensor:
        src_orig = src
        ds = self.downsample_factor
        src = self.downsample(src)
        if attn_mask is not None:
            attn_mask = attn_mask[::ds, ::ds]
        src = self.encoder(src, chunk_size=chunk_size // ds, feature_mask=feature_mask, attn_mask=attn_mask,
                           src_key_padding_mask=src_key_padding_mask)
        return self._upsample_and_combine(src_orig, src)

    def _upsample_and_combine(self, src_orig: Tensor, src: Tensor) -> Tensor:
        """out_combiner(src_orig, upsample(src)) as one op: the fused path reads each low-rate frame
        once per output frame and never writes the upsampled tensor (saved: src_orig, src)."""
        scale = self.out_combiner.get_scale(src_orig.shape[1])
        return upsample_bypass(src_orig, src, self.upsample.upsample, scale)

    def streaming_forward(self, src: Tensor, states: List[Tensor], left_context_len: int,
                          src_key_padding_mask: Tensor) -> Tuple[Tensor, List[Tensor]]:
        """As forward for one chunk; left_context_len and the mask are already at the lower rate.
        The chunk length is a multiple of the factor, so downsampling pads nothing."""
        src_orig = src
        src, new_states = self.encoder.streaming_forward(self.downsample(src), states, left_context_len,
                                                         src_key_padding_mask)
        return self._upsample_and_combine(src_orig, src), new_states
