"""ASR data: lhotse manifests and Fbank features, a resumable lhotse data module, a sentencepiece
tokenizer.

lhotse and sentencepiece are optional extras (`pip install zipformer_fast[data]`); nothing here
imports them until a function that needs them is called, and then a missing package raises an
ImportError that says what to install. The names below are imported on first use.
"""
from .._lazy import lazy_dir, lazy_exports
from .optional import require

_EXPORTS = {
    # manifests and features
    "Utterance": "manifests", "cuts_from_utterances": "manifests", "compute_fbank": "manifests",
    "speed_perturb": "manifests", "load_cuts": "manifests", "musan_cuts": "manifests",
    "load_musan": "manifests", "fbank_extractor": "manifests",
    # the data module
    "AsrDataModule": "datamodule", "DataConfig": "datamodule", "batch_inputs": "datamodule",
    "load_split": "datamodule",
    "BatchingError": "bucketing", "BucketPlan": "bucketing", "plan_bucketing": "bucketing",
    "check_epoch": "bucketing",
    # tokens
    "Tokenizer": "tokenizer", "train_bpe": "tokenizer",
}

__all__ = ["require", *_EXPORTS]
__getattr__ = lazy_exports(__name__, _EXPORTS)
__dir__ = lazy_dir(__name__, _EXPORTS)
