"""Lazy package exports: a package's `__getattr__` that imports the submodule defining a public
name on first use, so that `import zipformer_fast.<package>` stays cheap (torch only; lhotse,
sentencepiece, onnx are imported by the functions that need them) while `from
zipformer_fast.<package> import name` works for every name in its `__all__`."""
from __future__ import annotations

import importlib
import sys
from typing import Callable, Dict, List


def lazy_exports(package: str, exports: Dict[str, str]) -> Callable[[str], object]:
    """exports: public name -> "submodule" (same name there) or "submodule:name_there"."""
    def __getattr__(name: str):
        spec = exports.get(name)
        if spec is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = spec.partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attr or name)
        setattr(sys.modules[package], name, value)  # later lookups skip __getattr__
        return value
    return __getattr__


def lazy_dir(package: str, exports: Dict[str, str]) -> Callable[[], List[str]]:
    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))
    return __dir__
