"""Interoperability with icefall checkpoints."""
from .icefall import extract_state_dict, load_icefall_checkpoint

__all__ = ["extract_state_dict", "load_icefall_checkpoint"]
