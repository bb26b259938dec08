"""Read the configuration of a built icefall / `zipformer`-package module off the module itself.

Recognises icefall's `Zipformer2` (egs/librispeech/ASR/zipformer/zipformer.py), the `zipformer`
package's `Zipformer` (same code, renamed) and their `Conv2dSubsampling` (subsampling.py), by class
name plus the submodules they must have. Everything is read from attributes and parameter shapes;
what zipformer_fast cannot build (another number of stacks, a BiasNorm on a non-last channel dim,
...) raises AccelerateError naming the module and the field.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..config import ZipformerConfig

ENCODER_CLASS_NAMES = ("Zipformer2", "Zipformer")
EMBED_CLASS_NAMES = ("Conv2dSubsampling",)


class AccelerateError(ValueError):
    """A module that looks like icefall's but cannot be mapped onto zipformer_fast's."""


def peer_kind(module: nn.Module) -> Optional[str]:
    """"encoder", "embed" or None. A class with a recognised name but the wrong structure raises."""
    from ..nn.subsampling import Conv2dSubsampling as OurEmbed
    from ..nn.zipformer import Zipformer2 as OurEncoder
    if isinstance(module, (OurEncoder, OurEmbed)):
        return None
    name = type(module).__name__
    if name in ENCODER_CLASS_NAMES:
        missing = [a for a in ("encoders", "downsample_output", "encoder_dim", "downsampling_factor")
                   if not hasattr(module, a)]
        if missing:
            raise AccelerateError(f"{type(module).__module__}.{name} lacks {missing}: not icefall's Zipformer2")
        return "encoder"
    if name in EMBED_CLASS_NAMES:
        missing = [a for a in ("conv", "convnext", "out", "out_norm", "out_width") if not hasattr(module, a)]
        if missing:
            raise AccelerateError(f"{type(module).__module__}.{name} lacks {missing}: not the Zipformer "
                                  f"recipe's Conv2dSubsampling (e.g. a conformer recipe's), cannot accelerate it")
        return "embed"
    return None


def _stack_parts(encoder: nn.Module, i: int):
    """(inner Zipformer2Encoder, its first layer) of stack i."""
    stack = encoder.encoders[i]
    inner = stack.encoder if hasattr(stack, "downsample") and hasattr(stack, "encoder") else stack
    if not hasattr(inner, "layers") or len(inner.layers) == 0:
        raise AccelerateError(f"encoder.encoders[{i}] ({type(stack).__name__}) has no layers")
    return inner, inner.layers[0]


def encoder_config(encoder: nn.Module) -> ZipformerConfig:
    """The ZipformerConfig that builds a Zipformer2 with this module's structure."""
    ds = tuple(int(d) for d in encoder.downsampling_factor)
    n = len(ds)
    if n != 6:
        raise AccelerateError(f"Zipformer2 with {n} stacks (downsampling_factor={ds}): zipformer_fast "
                              f"supports exactly 6")
    num_layers, ff_dim, pos_head_dim, pos_dim = [], [], [], set()
    for i in range(n):
        inner, layer = _stack_parts(encoder, i)
        num_layers.append(len(inner.layers))
        ff_dim.append(layer.feed_forward2.in_proj.out_features)
        attn = layer.self_attn_weights
        pos_head_dim.append(attn.linear_pos.out_features // attn.num_heads)
        pos_dim.add(attn.linear_pos.in_features)
    if len(pos_dim) != 1:
        raise AccelerateError(f"Zipformer2: stacks use different pos_dim {sorted(pos_dim)}")
    # icefall: stack 0's first layer-drop schedule starts at warmup_batches * 1 / (num_stacks + 1).
    _, layer0 = _stack_parts(encoder, 0)
    skip = getattr(layer0.bypass, "skip_rate", None)
    warmup = 4000.0
    if hasattr(skip, "schedule"):
        warmup = float(skip.schedule.pairs[0][0]) * (n + 1)
    try:
        return ZipformerConfig(
            num_encoder_layers=tuple(num_layers), downsampling_factor=ds,
            feedforward_dim=tuple(ff_dim), num_heads=tuple(encoder.num_heads),
            encoder_dim=tuple(encoder.encoder_dim), encoder_unmasked_dim=tuple(encoder.encoder_unmasked_dim),
            cnn_module_kernel=tuple(encoder.cnn_module_kernel), query_head_dim=tuple(encoder.query_head_dim),
            value_head_dim=tuple(encoder.value_head_dim), pos_head_dim=tuple(pos_head_dim),
            pos_dim=pos_dim.pop(), output_downsampling_factor=int(encoder.output_downsampling_factor),
            warmup_batches=warmup, causal=bool(encoder.causal), chunk_size=tuple(encoder.chunk_size),
            left_context_frames=tuple(encoder.left_context_frames))
    except ValueError as e:
        raise AccelerateError(f"Zipformer2 configuration not supported by zipformer_fast: {e}") from e


def embed_args(embed: nn.Module) -> dict:
    """Constructor arguments of zipformer_fast's Conv2dSubsampling for this module."""
    conv = embed.conv
    try:
        channels = (conv[0].out_channels, conv[4].out_channels, conv[7].out_channels)
    except (IndexError, AttributeError) as e:
        raise AccelerateError(f"Conv2dSubsampling.conv is not icefall's 10-module Sequential: {e}") from e
    if getattr(embed.out_norm, "channel_dim", -1) not in (-1, 2):
        raise AccelerateError(f"Conv2dSubsampling.out_norm.channel_dim={embed.out_norm.channel_dim}: "
                              f"zipformer_fast normalises the last dim only")
    # Only out_width = ((in - 1) // 2 - 1) // 2 matters to the module; 4 * out_width + 3 gives it.
    return dict(in_channels=4 * int(embed.out_width) + 3, out_channels=embed.out.out_features,
                layer1_channels=channels[0], layer2_channels=channels[1], layer3_channels=channels[2])
