"""The model to export: a recipes/train.py checkpoint (averaged as recipes/decode.py averages:
--checkpoint, --epoch/--avg, --iter/--avg, --use-averaged-model) or an icefall checkpoint with its
architecture given as a preset/JSON config (zipformer_fast.compat.icefall).

Recipe checkpoints record their model configuration, so the architecture is read from them; a
--model-config that disagrees with it is an error. Loading them uses recipes/decode.py's own
load_model (the recipes live in the repository, not in the installed package), so this path
needs the repository root on sys.path (run from it). icefall checkpoints need only the package.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Optional, Tuple


def _config_from_spec(spec: str):
    """A preset name (S, M, L, XS) or a JSON file of ZipformerConfig fields (optionally "preset")."""
    import json
    from ..config import PRESETS, ZipformerConfig
    if spec.upper() in PRESETS:
        return ZipformerConfig.preset(spec)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"model config {spec!r}: not a preset ({', '.join(PRESETS)}) nor a JSON file")
    fields = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    known = {f.name for f in dataclasses.fields(ZipformerConfig)} | {"preset"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{path}: unknown ZipformerConfig fields {unknown}")
    preset = fields.pop("preset", None)
    return ZipformerConfig.preset(preset, **fields) if preset else ZipformerConfig(**fields)


def load_icefall_model(checkpoint: str, model_config: str, vocab_size: int, use_transducer: bool = True,
                       use_ctc: bool = False):
    """An AsrModel of `model_config` with the icefall checkpoint's weights (strict); a checkpoint of
    another architecture raises ValueError naming the mismatching tensors."""
    import torch
    from ..asr.model import AsrModel
    from ..compat.icefall import extract_state_dict, load_icefall_checkpoint
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"icefall checkpoint {checkpoint} not found")
    config = _config_from_spec(model_config).replace(vocab_size=vocab_size)
    model = AsrModel(config, vocab_size=vocab_size, use_transducer=use_transducer, use_ctc=use_ctc)
    obj = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state = extract_state_dict(obj)
    ref = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(ref[k].shape)}" for k, v in state.items()
             if k in ref and tuple(v.shape) != tuple(ref[k].shape)]
    if wrong:
        raise ValueError(f"{checkpoint} does not match --model-config {model_config} (vocab {vocab_size}): "
                         f"{len(wrong)} tensors differ in shape, e.g. {wrong[:3]}")
    try:
        load_icefall_checkpoint(model, obj, strict=True)
    except KeyError as exc:
        raise ValueError(f"{checkpoint} does not match the model built from --model-config {model_config} "
                         f"(use_transducer={use_transducer}, use_ctc={use_ctc}): {exc}") from None
    return model.eval()


def load_recipe_model(args: argparse.Namespace) -> Tuple[object, dict]:
    """(model in eval mode, checkpoint params) via recipes/decode.py's load_model."""
    try:
        from recipes.decode import load_model
    except ImportError as exc:
        raise ImportError("recipe checkpoints are loaded with recipes/decode.py: run from the repository root "
                          f"(python -m zipformer_fast.export ...) ({exc})") from None
    if not args.checkpoint and not Path(args.exp_dir).is_dir():
        raise FileNotFoundError(f"--exp-dir {args.exp_dir}: no such directory")
    ns = argparse.Namespace(exp_dir=args.exp_dir, checkpoint=args.checkpoint, avg_from=args.avg_from,
                            epoch=args.epoch, iter=args.iter, avg=args.avg,
                            use_averaged_model=args.use_averaged_model)
    model, params = load_model(ns)
    if args.model_config:
        given = dataclasses.asdict(_config_from_spec(args.model_config).replace(vocab_size=params["vocab_size"]))
        stored = dataclasses.asdict(model.config)
        diff = {k: (stored[k], given[k]) for k in stored if stored[k] != given.get(k)}
        if diff:
            raise ValueError(f"--model-config {args.model_config} disagrees with the checkpoint's configuration "
                             f"(checkpoint vs flag): {diff}")
    return model, params


def load_for_export(args: argparse.Namespace, vocab_size: Optional[int]):
    if args.icefall_checkpoint:
        if not args.model_config:
            raise ValueError("--icefall-checkpoint needs --model-config (a preset such as M, or a JSON file): "
                             "icefall checkpoints do not record their architecture")
        return load_icefall_model(args.icefall_checkpoint, args.model_config, vocab_size,
                                  use_transducer=bool(args.use_transducer), use_ctc=bool(args.use_ctc)), {}
    return load_recipe_model(args)
