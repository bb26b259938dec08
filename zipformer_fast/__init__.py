"""zipformer_fast: the Zipformer ASR encoder (icefall-exact) with fused Triton kernels.

Import cost: torch only. Triton, the compiled optimizer extension, lhotse and sentencepiece are
optional; see zipformer_fast.backend for how the fused path is chosen.
"""
__version__ = "0.1.0"

from .backend import get_backend, use_backend
from .config import ZipformerConfig

__all__ = ["__version__", "ZipformerConfig", "use_backend", "get_backend", "AsrModel", "Zipformer2"]


def __getattr__(name):
    # Lazy so that `import zipformer_fast` stays cheap and partial installs still import.
    if name == "AsrModel":
        from .asr.model import AsrModel
        return AsrModel
    if name == "Zipformer2":
        from .nn.zipformer import Zipformer2
        return Zipformer2
    raise AttributeError(name)
