"""Build lhotse cut manifests from (wav, transcript) lists, speed-perturb them, and store 80-dim Fbank.

Features follow icefall: lhotse's kaldi-compatible Fbank (pure torch, no torchaudio), 25 ms windows,
10 ms shift, 80 mel bins. Storage is lhotse's lilcom format when `lilcom` is installed (lossy,
~4x smaller), otherwise plain numpy files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .optional import require


@dataclass
class Utterance:
    """One recording with one transcript (the whole file is the supervision)."""
    id: str
    wav: Union[str, Path]
    text: str
    speaker: Optional[str] = None


def cuts_from_utterances(utts: Iterable[Utterance], language: str = "English"):
    """A CutSet with one cut per utterance, its supervision spanning the whole recording."""
    lhotse = require("lhotse")
    recordings, supervisions = [], []
    for u in utts:
        wav = Path(u.wav)
        if not wav.is_file():
            raise FileNotFoundError(f"utterance {u.id}: audio file {wav} does not exist")
        rec = lhotse.Recording.from_file(wav, recording_id=u.id)
        recordings.append(rec)
        supervisions.append(lhotse.SupervisionSegment(
            id=u.id, recording_id=u.id, start=0.0, duration=rec.duration, channel=0,
            text=u.text, speaker=u.speaker, language=language))
    if not recordings:
        raise ValueError("cuts_from_utterances: no utterances given")
    return lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings(recordings),
        supervisions=lhotse.SupervisionSet.from_segments(supervisions))


def speed_perturb(cuts, factors: Sequence[float] = (0.9, 1.1)):
    """icefall's offline 3-way perturbation: the cuts plus one resampled copy per factor
    (ids get `_sp<factor>`; durations become d / factor). Features must be computed afterwards."""
    out = cuts
    for f in factors:
        out = out + cuts.perturb_speed(f)
    return out


def fbank_extractor(device: str = "cpu"):
    """lhotse's 80-bin kaldi-compatible Fbank (the features every recipe here uses)."""
    lhotse = require("lhotse")
    return lhotse.Fbank(lhotse.FbankConfig(num_mel_bins=80, device=device))


def compute_fbank(cuts, storage_path: Union[str, Path], num_jobs: int = 1, progress_bar: bool = False):
    """Compute and store Fbank for every cut; returns the cuts with features attached (eager)."""
    require("lhotse")
    storage_type = None
    try:
        import lilcom  # noqa: F401  (optional: compact lossy storage)
        from lhotse import LilcomChunkyWriter
        storage_type = LilcomChunkyWriter
    except ImportError:
        from lhotse import NumpyFilesWriter
        storage_type = NumpyFilesWriter
    return cuts.compute_and_store_features(
        extractor=fbank_extractor(), storage_path=str(storage_path), num_jobs=num_jobs,
        storage_type=storage_type, progress_bar=progress_bar).to_eager()


def load_cuts(path: Union[str, Path], lazy: bool = False):
    """Load a cut manifest, with a clear error when it is missing."""
    lhotse = require("lhotse")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cut manifest {path} not found: run the recipe's prepare step first")
    return lhotse.load_manifest_lazy(path) if lazy else lhotse.load_manifest(path)
