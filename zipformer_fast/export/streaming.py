"""The streaming transducer encoder as one ONNX graph with its states as named inputs/outputs, in
the layout of icefall's egs/librispeech/ASR/zipformer/export-onnx-streaming.py that sherpa-onnx's
online-zipformer2-transducer-model.cc reads:

inputs  x (N, T, 80) with T = decode_chunk_len + 13, then for each encoder layer i (all stacks in
        order) cached_key_i, cached_nonlin_attn_i, cached_val1_i, cached_val2_i, cached_conv1_i,
        cached_conv2_i, then embed_states and processed_lens (int64);
outputs encoder_out (N, chunk_size // 2, joiner_dim) (joiner.encoder_proj applied), then new_<name>
        for every state, same order.
metadata model_type zipformer2, decode_chunk_len (= 2 * chunk_size, in 100 Hz feature frames), T,
        num_encoder_layers, encoder_dims, cnn_module_kernels, left_context_len (per stack, at its
        own rate), query_head_dims, value_head_dims, num_heads (comma-separated).
The decoder and joiner graphs are the offline ones.

embed_states is (N, 128, 3, 19) whatever the model's Conv-Embed width: sherpa-onnx creates that
state with 128 channels (icefall's layer3_channels; GetInitStates in
online-zipformer2-transducer-model.cc). A narrower model (e.g. the synthetic recipe's 64) reads its
channels from the front of it and writes them back zero-padded to 128, which changes no value.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..asr import streaming_encoder
from .wrappers import OnnxDecoder, OnnxJoiner

SHERPA_EMBED_CHANNELS = 128
STATE_NAMES = ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2", "cached_conv1", "cached_conv2")


def streaming_settings(model, chunk_size: Optional[int], left_context_frames: Optional[int]) -> Tuple[int, int]:
    """The chunk size and left context (50 Hz frames) to export: the given values, or the first
    positive ones the model was trained with."""
    cfg = model.config
    if chunk_size is None:
        chunk_size = next((c for c in cfg.chunk_size if c > 0), None)
    if left_context_frames is None:
        left_context_frames = next((c for c in cfg.left_context_frames if c > 0), None)
    if chunk_size is None or left_context_frames is None:
        raise ValueError(f"the model was trained with chunk_size {cfg.chunk_size} / left_context_frames "
                         f"{cfg.left_context_frames} (full context only): pass a chunk size and left context")
    return int(chunk_size), int(left_context_frames)


@contextlib.contextmanager
def configured(model, chunk_size: int, left_context_frames: int):
    """encoder.configure_streaming for the export (which also fixes the chunk mask of the offline
    graph of a causal model); the trained lists are restored afterwards."""
    enc = model.encoder
    saved = (list(enc.chunk_size), list(enc.left_context_frames))
    enc.configure_streaming(chunk_size, left_context_frames)
    try:
        yield
    finally:
        enc.chunk_size, enc.left_context_frames = saved


def state_names(model) -> List[str]:
    n_layers = sum(model.config.num_encoder_layers)
    return [f"{s}_{i}" for i in range(n_layers) for s in STATE_NAMES] + ["embed_states", "processed_lens"]


def init_states(model, batch_size: int = 1) -> List[Tensor]:
    """Zero states as the ONNX graph takes them (processed_lens int64, as sherpa-onnx makes it)."""
    states = streaming_encoder.get_init_states(model, batch_size)
    states[-2] = _pad_channels(states[-2])
    states[-1] = states[-1].to(torch.int64)
    return states


def _pad_channels(embed_state: Tensor) -> Tensor:
    n, c, t, f = embed_state.shape
    if c > SHERPA_EMBED_CHANNELS:
        raise ValueError(f"Conv-Embed has {c} output channels; sherpa-onnx's streaming Zipformer allows at most "
                         f"{SHERPA_EMBED_CHANNELS}")
    return torch.cat((embed_state, embed_state.new_zeros(n, SHERPA_EMBED_CHANNELS - c, t, f)), dim=1)


class OnnxStreamingEncoder(nn.Module):
    """x (N, 2 * chunk_size + 13, 80), *states -> encoder_out (N, chunk_size // 2, joiner_dim), *new_states."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, states: List[Tensor]):
        x_lens = torch.zeros_like(states[-1]) + x.shape[1]  # every stream's chunk is full
        states = list(states)
        states[-2] = states[-2][:, : self.model.encoder_embed.layer3_channels]
        out, _, new_states = streaming_encoder.streaming_forward(self.model, x, x_lens, states)
        new_states[-2] = _pad_channels(new_states[-2])
        new_states[-1] = new_states[-1].to(states[-1].dtype)
        return self.model.joiner.encoder_proj(out), new_states


def streaming_metadata(model, chunk_size: int, left_context_frames: int) -> Dict[str, object]:
    enc = model.encoder
    csv = lambda v: ",".join(str(int(i)) for i in v)  # noqa: E731
    decode_chunk_len = 2 * chunk_size
    return {"model_type": "zipformer2", "version": "1", "comment": "streaming zipformer2",
            "decode_chunk_len": decode_chunk_len, "T": streaming_encoder.chunk_feature_frames(chunk_size),
            "num_encoder_layers": csv(model.config.num_encoder_layers), "encoder_dims": csv(enc.encoder_dim),
            "cnn_module_kernels": csv(enc.cnn_module_kernel),
            "left_context_len": csv(left_context_frames // d for d in enc.downsampling_factor),
            "query_head_dims": csv(enc.query_head_dim), "value_head_dims": csv(enc.value_head_dim),
            "num_heads": csv(enc.num_heads), "chunk_size": chunk_size, "left_context_frames": left_context_frames}


def export_streaming_transducer(model, out: Path, spec) -> Dict[str, Dict[str, Path]]:
    from .onnx_files import AUTHOR, _export, _variants, add_metadata, export_decoder_joiner
    chunk_size, left = streaming_settings(model, spec.chunk_size, spec.left_context_frames)
    with configured(model, chunk_size, left):
        T = streaming_encoder.chunk_feature_frames(chunk_size)
        x = torch.zeros(1, T, model.config.feature_dim)
        states = init_states(model, 1)
        names = state_names(model)
        batch_dims = [1, 1, 1, 1, 0, 0] * (len(names) // 6) + [0, 0]
        axes = {"x": {0: "N"}, "encoder_out": {0: "N"}}
        for n, d in zip(names, batch_dims):
            axes[n] = {d: "N"}
            axes[f"new_{n}"] = {d: "N"}
        enc = out / "encoder.onnx"
        _export(OnnxStreamingEncoder(model), (x, states), enc, ["x"] + names,
                ["encoder_out"] + [f"new_{n}" for n in names], axes, spec.opset)
        add_metadata(enc, {**streaming_metadata(model, chunk_size, left), "model_author": AUTHOR,
                           "vocab_size": model.vocab_size, "joiner_dim": model.config.joiner_dim,
                           **spec.extra_metadata})
    files = {"encoder": _variants(enc, spec, ["MatMul"])}
    files.update(export_decoder_joiner(model, out, spec))
    return files
