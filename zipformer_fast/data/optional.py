"""Lazy imports of the optional data packages with an error message that says how to install them."""
from __future__ import annotations

import importlib

# Package import name -> pip distribution name.
_PIP_NAMES = {"lhotse": "lhotse", "sentencepiece": "sentencepiece", "soundfile": "soundfile",
              "urllib3": "urllib3", "tqdm": "tqdm", "tensorboard": "tensorboard"}


def require(module: str, purpose: str = "the ASR data pipeline"):
    """Import `module` or raise ImportError naming the pip package and the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pip_name = _PIP_NAMES.get(module.split(".")[0], module.split(".")[0])
        hint = f"pip install {pip_name}  (or: pip install 'zipformer_fast[data]')"
        if module.split(".")[0] == "lhotse" and getattr(exc, "name", "") == "urllib3":
            # lhotse imports urllib3 at top level without declaring it (lhotse 1.33).
            hint = "pip install urllib3  (lhotse needs it but does not declare it)"
        raise ImportError(f"{module} is required for {purpose} but could not be imported ({exc}). "
                          f"Install it with: {hint}") from exc
