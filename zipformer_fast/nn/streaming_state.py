"""Shape checks for the cached tensors that streaming_forward methods carry between chunks.

A state from another model configuration, left context or batch size would otherwise fail deep
inside a torch.cat or, worse, broadcast silently. The checks read shapes only (no tensor values),
so streaming_forward stays traceable by torch.onnx.export.
"""
from __future__ import annotations

from typing import Tuple

from torch import Tensor


def check_cache(name: str, cache: Tensor, expected: Tuple[int, ...]) -> None:
    """Raise ValueError unless `cache` has exactly the shape `expected`."""
    if not isinstance(cache, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(cache).__name__}")
    if tuple(cache.shape) != tuple(expected):
        raise ValueError(f"{name}: shape {tuple(cache.shape)}, expected {tuple(expected)} (a state of another "
                         f"model configuration, left context or batch size?)")
