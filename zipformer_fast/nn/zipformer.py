"""Zipformer2: the six-stack encoder (icefall egs/librispeech/ASR/zipformer/zipformer.py
Zipformer2 at icefall 36e0420).

forward(x (T1, B, D0) at 50 Hz, x_lens, src_key_padding_mask (B, T1)) -> ((ceil(T1/2), B, max D), lengths).
- Training: per-sequence feature masks narrow the stack width on ~12.5% / ~23% of sequences.
- causal=True: each forward picks chunk_size / left_context_frames with random.choice (in eval too,
  as icefall; pass a single value for deterministic decoding) and builds a chunked attention mask.
- Between stacks the width is truncated or zero-padded; the output concatenates, for each channel,
  the most recent stack that has it, then downsamples by 2 (learned softmax weights).
- Streaming (causal models): configure_streaming fixes the chunk size / left context,
  get_init_states and streaming_forward run one chunk with icefall's 6 cached states per layer
  (zipformer_fast.asr.streaming_encoder adds Conv-Embed and the padding mask).
"""
from __future__ import annotations

import random
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..ops.downsample import convert_num_channels
from ..config import ZipformerConfig
from .encoder_stack import DownsampledZipformer2Encoder, SimpleDownsample, Zipformer2Encoder
from .layer import Zipformer2EncoderLayer
from .scheduled_float import FloatLike, ScheduledFloat
from .streaming_state import check_cache

FEATURE_MASK_DROPOUT_PROB = 0.125


def default_dropout() -> ScheduledFloat:
    """icefall's train.py dropout: 0.3 -> 0.1 over 20k (adjusted) batches; 0 in eval."""
    return ScheduledFloat((0.0, 0.3), (20000.0, 0.1))


def chunk_attention_mask(seq_len: int, chunk_size: int, left_context_chunks: int, device=None) -> Tensor:
    """(T, T) bool, True = masked: key chunk after the query's chunk, or more than
    `left_context_chunks` chunks before it (negative = unlimited left context)."""
    if left_context_chunks < 0:
        left_context_chunks = 1000000
    c = torch.arange(seq_len, dtype=torch.int32, device=device) // chunk_size
    src_c, tgt_c = c, c.unsqueeze(-1)
    return torch.logical_or(src_c > tgt_c, src_c < tgt_c - left_context_chunks)


class Zipformer2(nn.Module):
    def __init__(self, config: ZipformerConfig, dropout: FloatLike = None):
        super().__init__()
        config.validate()
        if dropout is None:
            dropout = default_dropout()
        self.config = config
        self.output_downsampling_factor = config.output_downsampling_factor
        self.downsampling_factor = tuple(config.downsampling_factor)
        self.encoder_dim = tuple(config.encoder_dim)
        self.encoder_unmasked_dim = tuple(config.encoder_unmasked_dim)
        self.num_heads = tuple(config.num_heads)
        self.query_head_dim = tuple(config.query_head_dim)
        self.value_head_dim = tuple(config.value_head_dim)
        self.cnn_module_kernel = tuple(config.cnn_module_kernel)
        self.causal = config.causal
        self.chunk_size = list(config.chunk_size)
        self.left_context_frames = list(config.left_context_frames)

        num_encoders = len(self.downsampling_factor)
        warmup = config.warmup_batches
        encoders = []
        for i in range(num_encoders):
            layer = Zipformer2EncoderLayer(
                embed_dim=config.encoder_dim[i], pos_dim=config.pos_dim, num_heads=config.num_heads[i],
                query_head_dim=config.query_head_dim[i], pos_head_dim=config.pos_head_dim[i],
                value_head_dim=config.value_head_dim[i], feedforward_dim=config.feedforward_dim[i],
                dropout=dropout, cnn_module_kernel=config.cnn_module_kernel[i], causal=config.causal)
            encoder = Zipformer2Encoder(
                layer, config.num_encoder_layers[i], pos_dim=config.pos_dim, dropout=dropout,
                warmup_begin=warmup * (i + 1) / (num_encoders + 1),
                warmup_end=warmup * (i + 2) / (num_encoders + 1),
                final_layerdrop_rate=0.035 * (config.downsampling_factor[i] ** 0.5))
            if config.downsampling_factor[i] != 1:
                encoder = DownsampledZipformer2Encoder(encoder, dim=config.encoder_dim[i],
                                                       downsample=config.downsampling_factor[i], dropout=dropout)
            encoders.append(encoder)
        self.encoders = nn.ModuleList(encoders)
        self.downsample_output = SimpleDownsample(max(self.encoder_dim), downsample=self.output_downsampling_factor,
                                                  dropout=dropout)

    # ------------------------------------------------------------------ training-time randomness
    def get_feature_masks(self, x: Tensor) -> Union[List[float], List[Tensor]]:
        """[1.0]*6 in eval; in training one (1, B, D_i) mask per stack (icefall Zipformer2.get_feature_masks)."""
        if not self.training:
            return [1.0] * len(self.encoder_dim)
        _, batch_size, d0 = x.shape
        if d0 != self.encoder_dim[0]:
            raise ValueError(f"Zipformer2: input width {d0} != encoder_dim[0]={self.encoder_dim[0]}")
        p = FEATURE_MASK_DROPOUT_PROB
        mask1 = (torch.rand(1, batch_size, 1, device=x.device) > p).to(x.dtype)
        mask2 = torch.logical_and(mask1, (torch.rand(1, batch_size, 1, device=x.device) > p).to(x.dtype))
        mask = torch.cat((mask1, mask2), dim=-1)
        masks = []
        for d, u1 in zip(self.encoder_dim, self.encoder_unmasked_dim):
            m = torch.ones(1, batch_size, d, dtype=x.dtype, device=x.device)
            u2 = u1 + (d - u1) // 2
            m[:, :, u1:u2] *= mask[..., 0:1]
            m[:, :, u2:] *= mask[..., 1:2]
            masks.append(m)
        return masks

    def get_chunk_info(self) -> Tuple[int, int]:
        """(chunk_size, left_context_chunks); (-1, -1) when not causal or full context was drawn."""
        if not self.causal:
            return -1, -1
        if torch.compiler.is_compiling():
            # The chunk size sets shapes (conv chunking, mask pattern): a compiled graph is built for
            # one choice; a random choice per call cannot be traced.
            if len(self.chunk_size) != 1 or len(self.left_context_frames) != 1:
                raise RuntimeError(
                    f"torch.compile of a causal Zipformer2 needs one chunk_size and one left_context_frames "
                    f"(got {self.chunk_size} / {self.left_context_frames}): the per-call random choice "
                    "changes shapes; build the model (or a decoding copy) with a single value of each")
            return self._chunk_info(self.chunk_size[0], self.left_context_frames[0])
        chunk_size = random.choice(self.chunk_size)
        if chunk_size == -1:
            return -1, -1
        return self._chunk_info(chunk_size, random.choice(self.left_context_frames))

    @staticmethod
    def _chunk_info(chunk_size: int, left_context_frames: int) -> Tuple[int, int]:
        if chunk_size == -1:
            return -1, -1
        left_context_chunks = left_context_frames // chunk_size  # -1 // c == -1
        if left_context_chunks == 0:
            left_context_chunks = 1
        return chunk_size, left_context_chunks

    def get_attn_mask(self, x: Tensor, chunk_size: int, left_context_chunks: int) -> Optional[Tensor]:
        if chunk_size <= 0:
            return None
        if any(chunk_size % d for d in self.downsampling_factor):
            raise ValueError(f"chunk_size={chunk_size} must be divisible by every downsampling factor "
                             f"{self.downsampling_factor}")
        if left_context_chunks >= 0:
            for k, ds in zip(self.cnn_module_kernel, self.downsampling_factor):
                if chunk_size * left_context_chunks < (k // 2) * ds:
                    raise ValueError(f"left context {chunk_size * left_context_chunks} frames is shorter than the "
                                     f"conv receptive field (kernel {k}, downsampling {ds})")
        return chunk_attention_mask(x.shape[0], chunk_size, left_context_chunks, device=x.device)

    # ---------------------------------------------------------------------------------- forward
    def _get_full_dim_output(self, outputs: List[Tensor]) -> Tensor:
        pieces = [outputs[-1]]
        cur = self.encoder_dim[-1]
        for i in range(len(self.encoder_dim) - 2, -1, -1):
            d = self.encoder_dim[i]
            if d > cur:
                pieces.append(outputs[i][..., cur:d])
                cur = d
        return torch.cat(pieces, dim=-1)

    def forward(self, x: Tensor, x_lens: Tensor, src_key_padding_mask: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        feature_masks = self.get_feature_masks(x)
        chunk_size, left_context_chunks = self.get_chunk_info()
        attn_mask = self.get_attn_mask(x, chunk_size, left_context_chunks)
        outputs = []
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            x = convert_num_channels(x, self.encoder_dim[i])
            x = module(x, chunk_size=chunk_size, feature_mask=feature_masks[i],
                       src_key_padding_mask=None if src_key_padding_mask is None else src_key_padding_mask[..., ::ds],
                       attn_mask=attn_mask)
            outputs.append(x)
        x = self.downsample_output(self._get_full_dim_output(outputs))
        lengths = (x_lens + 1) // 2
        return x, lengths

    # -------------------------------------------------------------------------------- streaming
    def configure_streaming(self, chunk_size: int, left_context_frames: int, allow_untrained: bool = False) -> None:
        """Fix the chunk size and left context (frames at 50 Hz, after Conv-Embed) used by
        get_init_states / streaming_forward and by forward's chunk mask (simulated streaming), as
        icefall's decoding scripts do by building the model with one value of each. Both must be
        values the model was trained with (config.chunk_size / left_context_frames) unless
        allow_untrained."""
        if not self.causal:
            raise ValueError("streaming needs a causal model (ZipformerConfig(causal=True)); this one was built "
                             "with causal=False")
        chunk_size, left_context_frames = int(chunk_size), int(left_context_frames)
        max_ds = max(self.downsampling_factor)
        if chunk_size <= 0 or chunk_size % max_ds:
            raise ValueError(f"chunk_size={chunk_size}: must be a positive multiple of {max_ds} (the largest "
                             f"downsampling factor)")
        if left_context_frames <= 0 or left_context_frames % max_ds:
            raise ValueError(f"left_context_frames={left_context_frames}: streaming needs a finite left context, "
                             f"a positive multiple of {max_ds}")
        if not allow_untrained:
            trained_chunks = tuple(self.config.chunk_size)
            trained_left = tuple(self.config.left_context_frames)
            if chunk_size not in trained_chunks:
                raise ValueError(f"chunk_size={chunk_size}: this model was trained with chunk sizes {trained_chunks} "
                                 f"(pass allow_untrained=True to use another)")
            if left_context_frames not in trained_left:
                raise ValueError(f"left_context_frames={left_context_frames}: this model was trained with "
                                 f"{trained_left} (pass allow_untrained=True to use another)")
        self.chunk_size = [chunk_size]
        self.left_context_frames = [left_context_frames]

    def streaming_chunk_info(self) -> Tuple[int, int]:
        """(chunk_size, left_context_frames) that streaming uses: the first configured values, as icefall."""
        if not self.causal:
            raise ValueError("streaming needs a causal model (ZipformerConfig(causal=True)); this one was built "
                             "with causal=False")
        chunk_size, left = self.chunk_size[0], self.left_context_frames[0]
        max_ds = max(self.downsampling_factor)
        if chunk_size <= 0 or left <= 0 or chunk_size % max_ds or left % max_ds:
            raise ValueError(f"streaming with chunk_size={chunk_size}, left_context_frames={left}: both must be "
                             f"positive multiples of {max_ds}; call configure_streaming(chunk_size, left_context_frames)")
        return chunk_size, left

    def init_state_shapes(self, batch_size: int) -> List[Tuple[int, ...]]:
        """Shapes of the 6 states per layer, in icefall's order: cached_key (L, B, H*dq),
        cached_nonlin_attn (1, B, L, 3D/4), cached_val1, cached_val2 (L, B, H*dv), cached_conv1,
        cached_conv2 (B, D, K//2), with L = left_context_frames // downsampling of the stack."""
        _, left = self.streaming_chunk_info()
        shapes = []
        for i, module in enumerate(self.encoders):
            L = left // self.downsampling_factor[i]
            D, H = self.encoder_dim[i], self.num_heads[i]
            conv = (batch_size, D, self.cnn_module_kernel[i] // 2)
            layer = [(L, batch_size, H * self.query_head_dim[i]), (1, batch_size, L, 3 * D // 4),
                     (L, batch_size, H * self.value_head_dim[i]), (L, batch_size, H * self.value_head_dim[i]),
                     conv, conv]
            shapes += layer * module.num_layers
        return shapes

    def get_init_states(self, batch_size: int = 1, device: torch.device = torch.device("cpu")) -> List[Tensor]:
        """Zero states for `batch_size` streams (icefall Zipformer2.get_init_states): for layer i
        (over all stacks in order), states[6i:6i+6] = (cached_key, cached_nonlin_attn, cached_val1,
        cached_val2, cached_conv1, cached_conv2); see init_state_shapes."""
        dtype = next(self.parameters()).dtype
        return [torch.zeros(shape, dtype=dtype, device=device) for shape in self.init_state_shapes(batch_size)]

    def check_states(self, states: List[Tensor], batch_size: int) -> None:
        """ValueError unless `states` has this model's count and shapes for `batch_size` streams."""
        shapes = self.init_state_shapes(batch_size)
        if not isinstance(states, (list, tuple)) or len(states) != len(shapes):
            n = len(states) if isinstance(states, (list, tuple)) else type(states).__name__
            raise ValueError(f"Zipformer2: got {n} states, this model has {len(shapes)} (6 per layer, "
                             f"{len(shapes) // 6} layers)")
        names = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2", "cached_conv1", "cached_conv2")
        for j, (state, shape) in enumerate(zip(states, shapes)):
            check_cache(f"state {j} (layer {j // 6}, {names[j % 6]})", state, shape)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, states: List[Tensor], src_key_padding_mask: Tensor
                          ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """One chunk (icefall Zipformer2.streaming_forward): x (chunk_size, B, D0) at 50 Hz; x_lens (B,);
        states from get_init_states (or the previous call); src_key_padding_mask (B, L + chunk_size),
        True for cached frames not yet filled and for padding. Returns (out (chunk_size/2, B, max D),
        lengths (x_lens + 1) // 2, new states). Eval semantics (no feature masks, no randomness)."""
        chunk_size, left = self.streaming_chunk_info()
        T, B, D0 = x.shape
        if T != chunk_size or D0 != self.encoder_dim[0]:
            raise ValueError(f"Zipformer2.streaming_forward: x has shape {tuple(x.shape)}, expected "
                             f"({chunk_size}, B, {self.encoder_dim[0]}) for chunk_size={chunk_size}")
        if tuple(src_key_padding_mask.shape) != (B, left + chunk_size):
            raise ValueError(f"src_key_padding_mask has shape {tuple(src_key_padding_mask.shape)}, expected "
                             f"{(B, left + chunk_size)} (left context + chunk)")
        self.check_states(states, B)
        outputs, new_states, offset = [], [], 0
        for i, module in enumerate(self.encoders):
            ds = self.downsampling_factor[i]
            n = 6 * module.num_layers
            x = convert_num_channels(x, self.encoder_dim[i])
            x, stack_states = module.streaming_forward(x, states[offset:offset + n], left_context_len=left // ds,
                                                       src_key_padding_mask=src_key_padding_mask[..., ::ds])
            offset += n
            outputs.append(x)
            new_states += stack_states
        x = self.downsample_output(self._get_full_dim_output(outputs))
        return x, (x_lens + 1) // 2, new_states
