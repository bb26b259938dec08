"""ASR data: lhotse manifests and Fbank features, a resumable lhotse data module, a sentencepiece
tokenizer.

lhotse and sentencepiece are optional extras (`pip install zipformer_fast[data]`); nothing here
imports them until a function that needs them is called, and then a missing package raises an
ImportError that says what to install.
"""
from .optional import require

__all__ = ["require"]
