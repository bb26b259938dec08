"""Model construction from a preset name or a JSON config file, recorded in checkpoints so that
decode.py rebuilds exactly the trained model."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional, Tuple

from zipformer_fast import BASE_LR, PRESETS, ZipformerConfig


def load_config(spec: str) -> ZipformerConfig:
    """`spec` is a preset name (S, M, L, XS) or a JSON file with ZipformerConfig fields; the JSON may
    name a "preset" to start from and override any field of it."""
    if spec.upper() in PRESETS:
        return ZipformerConfig.preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model config {spec!r}: not a preset ({', '.join(PRESETS)}) nor an existing JSON file")
    fields = json.loads(path.read_text())
    fields = {k: v for k, v in fields.items() if not k.startswith("_")}  # "_comment" keys
    preset = fields.pop("preset", None)
    known = {f.name for f in dataclasses.fields(ZipformerConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: unknown ZipformerConfig fields {unknown}")
    return ZipformerConfig.preset(preset, **fields) if preset else ZipformerConfig(**fields)


def default_base_lr(spec: str) -> float:
    return BASE_LR.get(spec.upper(), 0.045)


def config_to_dict(config: ZipformerConfig) -> dict:
    return dataclasses.asdict(config)


def build_model(config: ZipformerConfig, vocab_size: int, use_transducer: bool, use_ctc: bool,
                use_attention_decoder: bool = False, attention_decoder: Optional[dict] = None):
    """attention_decoder: AttentionDecoderConfig fields (None: icefall's defaults)."""
    from zipformer_fast.asr import AsrModel, AttentionDecoderConfig
    config = config.replace(vocab_size=vocab_size)
    aed = AttentionDecoderConfig(**(attention_decoder or {})) if use_attention_decoder else None
    return AsrModel(config, vocab_size=vocab_size, use_transducer=use_transducer, use_ctc=use_ctc,
                    use_attention_decoder=use_attention_decoder, attention_decoder_config=aed)


def attention_decoder_fields(args) -> dict:
    """AttentionDecoderConfig fields from train.py's --attention-decoder-* flags."""
    return dict(decoder_dim=args.attention_decoder_dim, num_layers=args.attention_decoder_num_layers,
                attention_dim=args.attention_decoder_attention_dim,
                num_heads=args.attention_decoder_num_heads,
                feedforward_dim=args.attention_decoder_feedforward_dim)


def model_from_checkpoint_params(params: dict) -> Tuple[object, ZipformerConfig]:
    """Rebuild the model a checkpoint was trained with (weights not loaded)."""
    config = ZipformerConfig(**params["model_config"])
    return build_model(config, params["vocab_size"], params["use_transducer"], params["use_ctc"],
                       params.get("use_attention_decoder", False), params.get("attention_decoder")), config
