"""The whole encoder (Conv-Embed + Zipformer2) one chunk at a time, with icefall's state layout
(egs/librispeech/ASR/zipformer/streaming_decode.py: get_init_states, stack_states,
unstack_states, streaming_forward), which sherpa-onnx's streaming Zipformer also uses.

States of a batch of B streams, a flat list:
- for each encoder layer i (all stacks in order) states[6i:6i+6] = cached_key (L_i, B, key_dim),
  cached_nonlin_attn (1, B, L_i, 3D/4), cached_val1 and cached_val2 (L_i, B, value_dim),
  cached_conv1 and cached_conv2 (B, D, kernel//2), with L_i = left_context_frames // downsampling;
- states[-2]: Conv-Embed's ConvNeXt left pad (B, channels, 3, 19);
- states[-1]: processed_lens (B,), frames at 50 Hz already seen (int32 at first, int64 once a chunk
  has been added, as icefall).
The attention/non-linear attention/value caches hold their batch on dim 1, the others on dim 0.

One chunk of `chunk_size` frames at 50 Hz takes 2 * chunk_size + 13 feature frames: 7 for
Conv-Embed's convolutions and 2 * 3 of look-ahead for its ConvNeXt block (LOOKAHEAD_FRAMES), so
consecutive chunks' feature windows overlap by 13 frames and the model sees 13 feature frames
(130 ms) past each chunk. Pad with LOG_EPS = log(1e-10), a silent fbank frame.
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

LOG_EPS = math.log(1e-10)
# Conv-Embed maps T frames to (T - 7) // 2, and ConvNeXt's 7x7 conv needs 3 more frames after that.
LOOKAHEAD_FRAMES = 7 + 2 * 3


def chunk_feature_frames(chunk_size: int) -> int:
    """Feature frames one chunk consumes: 2 * chunk_size new frames plus the look-ahead."""
    return 2 * chunk_size + LOOKAHEAD_FRAMES


def get_init_states(model, batch_size: int = 1, device: torch.device = torch.device("cpu")) -> List[Tensor]:
    """Zero states of the whole encoder for `batch_size` streams (layout in the module docstring)."""
    states = model.encoder.get_init_states(batch_size, device)
    states.append(model.encoder_embed.get_init_states(batch_size, device))
    states.append(torch.zeros(batch_size, dtype=torch.int32, device=device))
    return states


def _batch_dims(num_states: int) -> List[int]:
    """The dim that holds the batch in each state."""
    if num_states < 2 or (num_states - 2) % 6:
        raise ValueError(f"{num_states} states: expected 6 per encoder layer plus 2 (Conv-Embed pad, processed_lens)")
    return [1, 1, 1, 1, 0, 0] * ((num_states - 2) // 6) + [0, 0]


def stack_states(state_list: Sequence[List[Tensor]]) -> List[Tensor]:
    """Per-stream states (each for a batch of 1 or more) -> the states of their concatenation."""
    if not state_list:
        raise ValueError("stack_states: no states given")
    n = len(state_list[0])
    if any(len(s) != n for s in state_list):
        raise ValueError(f"stack_states: streams carry different numbers of states {[len(s) for s in state_list]} "
                         f"(states of different models?)")
    return [torch.cat([s[j] for s in state_list], dim=d) for j, d in enumerate(_batch_dims(n))]


def unstack_states(batch_states: List[Tensor]) -> List[List[Tensor]]:
    """Inverse of stack_states: a batch's states -> one list per stream (batch 1 each)."""
    dims = _batch_dims(len(batch_states))
    B = batch_states[-1].shape[0]
    pieces = [t.chunk(B, dim=d) for t, d in zip(batch_states, dims)]
    return [[p[b] for p in pieces] for b in range(B)]


def check_model_states(model, states: List[Tensor], batch_size: int) -> None:
    """ValueError unless `states` fit this model, its streaming configuration and `batch_size`."""
    if not isinstance(states, (list, tuple)) or len(states) < 2:
        raise ValueError("states must be the list from get_init_states (encoder states, Conv-Embed pad, processed_lens)")
    model.encoder.check_states(list(states[:-2]), batch_size)
    pad = model.encoder_embed.get_init_states(batch_size, device="meta")
    if tuple(states[-2].shape) != tuple(pad.shape):
        raise ValueError(f"Conv-Embed state: shape {tuple(states[-2].shape)}, expected {tuple(pad.shape)} (a state of "
                         f"another model configuration or batch size?)")
    if tuple(states[-1].shape) != (batch_size,):
        raise ValueError(f"processed_lens: shape {tuple(states[-1].shape)}, expected ({batch_size},)")


def streaming_forward(model, features: Tensor, feature_lens: Tensor, states: List[Tensor]
                      ) -> Tuple[Tensor, Tensor, List[Tensor]]:
    """One chunk for a batch of streams (icefall streaming_decode.streaming_forward).

    features (B, 2 * chunk_size + 13, F) and feature_lens (B,) (valid frames, padding after them);
    states from get_init_states / stack_states. Returns encoder_out (B, chunk_size // 2, E),
    encoder_out_lens (B,) and the new states. The key-padding mask hides the chunk's padding and
    the cached left-context frames not yet filled (fewer than L frames processed so far)."""
    chunk_size, left = model.encoder.streaming_chunk_info()
    need = chunk_feature_frames(chunk_size)
    if features.ndim != 3 or features.shape[1] != need:
        raise ValueError(f"features of shape {tuple(features.shape)}: a chunk of {chunk_size} frames takes "
                         f"(B, {need}, feature_dim) (2 * chunk_size + {LOOKAHEAD_FRAMES} frames of look-ahead)")
    if feature_lens.shape != (features.shape[0],):
        raise ValueError(f"feature_lens of shape {tuple(feature_lens.shape)} for a batch of {features.shape[0]}")
    B = features.shape[0]
    check_model_states(model, states, B)
    x, x_lens, new_embed_pad = model.encoder_embed.streaming_forward(features, feature_lens, states[-2])
    chunk_mask = torch.arange(x.shape[1], device=x.device).unsqueeze(0) >= x_lens.unsqueeze(1)
    processed_lens = states[-1]
    # Cached frame j of L (oldest first) is real once more than L - 1 - j frames were processed.
    unfilled = (processed_lens.unsqueeze(1) <= torch.arange(left, device=x.device).unsqueeze(0)).flip(1)
    src_key_padding_mask = torch.cat((unfilled, chunk_mask), dim=1)
    out, out_lens, new_states = model.encoder.streaming_forward(x.permute(1, 0, 2), x_lens, list(states[:-2]),
                                                                src_key_padding_mask)
    return out.permute(1, 0, 2), out_lens, new_states + [new_embed_pad, processed_lens + x_lens]
