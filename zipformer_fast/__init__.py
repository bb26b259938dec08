"""zipformer_fast: the Zipformer ASR encoder (icefall-exact) with fused Triton kernels.

Import cost: torch only. Triton, the compiled optimizer extension, lhotse and sentencepiece are
optional; `configure` (zipformer_fast.runtime) chooses what runs.
"""
__version__ = "0.1.0"

from .compile_settings import compile_settings
from .config import BASE_LR, PRESETS, ZipformerConfig
from .runtime import configure, get_backend, settings, use_backend

__all__ = ["__version__", "ZipformerConfig", "PRESETS", "BASE_LR", "configure", "settings", "use_backend",
           "get_backend", "compile_settings", "AsrModel", "Zipformer2",
           "accelerate", "revert", "accelerate_classes"]


def __getattr__(name):
    # Lazy so that `import zipformer_fast` stays cheap and partial installs still import.
    if name == "AsrModel":
        from .asr.model import AsrModel
        return AsrModel
    if name == "Zipformer2":
        from .nn.zipformer import Zipformer2
        return Zipformer2
    raise AttributeError(name)


def accelerate(model, backend: str = "auto"):
    """Swap zipformer_fast's modules into an icefall / zipformer-package model (see compat.accelerate)."""
    from .compat.accelerate import accelerate as _accelerate
    return _accelerate(model, backend=backend)


def revert(model):
    """Undo `accelerate` (see compat.accelerate)."""
    from .compat.accelerate import revert as _revert
    return _revert(model)


def accelerate_classes(*namespaces, backend: str = "auto"):
    """Patch icefall / zipformer-package classes in `namespaces` (see compat.accelerate)."""
    from .compat.accelerate import accelerate_classes as _accelerate_classes
    return _accelerate_classes(*namespaces, backend=backend)
