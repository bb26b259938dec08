"""Load icefall Zipformer checkpoints into zipformer_fast's AsrModel.

icefall saves `{"model": state_dict, ...}` (train.py / averaged checkpoints) or a bare state dict;
its keys equal ours (tests/data/state_dict_*.tsv are icefall's), so loading is `load_state_dict(strict=True)` after unwrapping
and dropping a DDP "module." prefix. Heads the checkpoint lacks (e.g. no CTC) must be disabled in
the AsrModel; a mismatch raises with the missing/unexpected keys listed.
"""
from __future__ import annotations

from typing import Mapping

import torch


def extract_state_dict(checkpoint) -> Mapping[str, torch.Tensor]:
    """The model state dict inside an icefall checkpoint object (dict with "model", or a bare state dict)."""
    if isinstance(checkpoint, Mapping) and "model" in checkpoint and isinstance(checkpoint["model"], Mapping):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"expected a state dict or a dict with key 'model', got {type(checkpoint).__name__}")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def load_icefall_checkpoint(model: torch.nn.Module, path_or_obj, strict: bool = True):
    """Load an icefall checkpoint (path or loaded object) into `model`; returns the load result."""
    obj = path_or_obj
    if not isinstance(obj, Mapping):
        obj = torch.load(obj, map_location="cpu", weights_only=False)
    state = extract_state_dict(obj)
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise KeyError(f"checkpoint does not match the model: missing {result.missing_keys[:10]} "
                       f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:10]} "
                       f"({len(result.unexpected_keys)}); build AsrModel with the heads the checkpoint has")
    return result
