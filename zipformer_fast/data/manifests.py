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


# Below this many cuts per process, spawning worker processes (each imports torch and lhotse)
# costs more than it saves.
MIN_CUTS_PER_JOB = 1000


def _one_torch_thread() -> None:
    import torch
    torch.set_num_threads(1)  # lhotse: several jobs with several torch threads each can hang
    torch.set_num_interop_threads(1)


def compute_fbank(cuts, storage_path: Union[str, Path], num_jobs: int = 1, progress_bar: bool = False):
    """Compute and store Fbank for every cut; returns the cuts with features attached (eager).

    `num_jobs` worker processes at most; fewer for small cut sets (MIN_CUTS_PER_JOB)."""
    require("lhotse")
    storage_type = None
    try:
        import lilcom  # noqa: F401  (optional: compact lossy storage)
        from lhotse import LilcomChunkyWriter
        storage_type = LilcomChunkyWriter
    except ImportError:
        from lhotse import NumpyFilesWriter
        storage_type = NumpyFilesWriter
    # lhotse's parallel path calls len() on the cut set, which lazy sets (what trim_to_supervisions
    # and speed perturbation return) do not support: materialise first. Cuts without audio-level
    # payload are small, so this costs little memory even for LibriSpeech's 843k perturbed cuts.
    if cuts.is_lazy:
        cuts = cuts.to_eager()
    num_jobs = max(1, min(num_jobs, len(cuts) // MIN_CUTS_PER_JOB))
    executor = None
    if num_jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        executor = ProcessPoolExecutor(num_jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_one_torch_thread)
    try:
        return cuts.compute_and_store_features(
            extractor=fbank_extractor(), storage_path=str(storage_path), num_jobs=num_jobs,
            executor=executor, storage_type=storage_type, progress_bar=progress_bar).to_eager()
    finally:
        if executor is not None:
            executor.shutdown()


MUSAN_HINT = ("download MUSAN (https://www.openslr.org/17/, or `lhotse download musan DIR`) and prepare "
              "its cuts with `python -m recipes.librispeech.prepare --musan-dir DIR/musan ...` "
              "(stage 2 of recipes/librispeech/run.sh), or drop the MUSAN option")


def load_musan(path: Union[str, Path]):
    """The MUSAN noise cuts for CutMix, with an error naming what to download when they are absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MUSAN noise mixing was requested but {path} does not exist: {MUSAN_HINT}")
    return load_cuts(path)


def musan_cuts(musan_dir: Union[str, Path], storage_path: Union[str, Path], num_jobs: int = 1,
               compute_features: bool = True):
    """icefall's local/compute_fbank_musan.py: MUSAN's music, speech and noise recordings cut into
    10 s windows, windows of 5 s or less dropped, Fbank attached (unless computed on the fly)."""
    lhotse = require("lhotse")
    from lhotse.recipes import prepare_musan
    musan_dir = Path(musan_dir)
    if not all((musan_dir / part).is_dir() for part in ("music", "speech", "noise")):
        raise FileNotFoundError(f"{musan_dir} is not a MUSAN directory (it needs music/, speech/ and noise/): "
                                f"{MUSAN_HINT}")
    parts = prepare_musan(musan_dir, parts=("music", "speech", "noise"))
    recordings = lhotse.combine(p["recordings"] for p in parts.values())
    cuts = lhotse.CutSet.from_manifests(recordings=recordings).cut_into_windows(10.0)
    cuts = cuts.filter(lambda c: c.duration > 5).to_eager()
    if compute_features:
        cuts = compute_fbank(cuts, storage_path, num_jobs=num_jobs)
    return cuts


def load_cuts(path: Union[str, Path], lazy: bool = False):
    """Load a cut manifest, with a clear error when it is missing."""
    lhotse = require("lhotse")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cut manifest {path} not found: run the recipe's prepare step first")
    return lhotse.load_manifest_lazy(path) if lazy else lhotse.load_manifest(path)
