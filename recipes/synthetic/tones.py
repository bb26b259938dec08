"""A tool-free toy corpus for tests: every word is a fixed sequence of pure tones, so it needs only
numpy and soundfile (no espeak-ng). Same layout as prepare.py (wav/, manifests/, lang/bpe.model).

Words are distinguishable by construction, so a model can fit it, but it is only meant to drive
the pipeline (DDP, resume, data module tests), not to measure accuracy.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from .prepare import write_manifests

TONE_WORDS = ["RED", "GREEN", "BLUE", "ONE", "TWO", "THREE", "CAT", "DOG", "SUN", "MOON"]
SAMPLE_RATE = 16000


def _word_audio(word: str, rng: np.random.Generator, speed: float) -> np.ndarray:
    k = TONE_WORDS.index(word)
    # Three 70 ms tones per word from a word-specific set of frequencies (200-2000 Hz).
    freqs = [200.0 + 180.0 * ((k * 3 + j * 7) % 10) for j in range(3)]
    n = int(0.07 * SAMPLE_RATE / speed)
    t = np.arange(n) / SAMPLE_RATE
    parts = [0.3 * np.sin(2 * np.pi * f * t) * np.hanning(n) for f in freqs]
    parts.append(np.zeros(int(0.04 * SAMPLE_RATE)))  # a short pause between words
    return np.concatenate(parts)


def make_tone_corpus(data_dir, n_train: int = 40, n_dev: int = 6, n_test: int = 6,
                     vocab_size: int = 24, seed: int = 0) -> Path:
    """Write the corpus and return data_dir. Utterances are 1.1-2.4 s (4-8 words)."""
    import soundfile as sf
    from zipformer_fast.data import train_bpe

    data_dir = Path(data_dir)
    rng = np.random.default_rng(seed)
    pyrng = random.Random(seed)
    plan = {}
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        (data_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        utts = []
        for i in range(n):
            words = [pyrng.choice(TONE_WORDS) for _ in range(pyrng.randint(4, 8))]
            speed = pyrng.uniform(0.9, 1.1)
            audio = np.concatenate([np.zeros(1600)] + [_word_audio(w, rng, speed) for w in words])
            audio = audio + 0.01 * rng.standard_normal(audio.shape)
            uid = f"{split}-{i:04d}"
            sf.write(data_dir / "wav" / split / f"{uid}.wav", audio.astype(np.float32), SAMPLE_RATE,
                     subtype="PCM_16")
            utts.append({"id": uid, "text": " ".join(words), "speaker": f"tone{i % 3}"})
        plan[split] = utts
    write_manifests(data_dir, plan)
    train_bpe((u["text"] for u in plan["train"]), data_dir / "lang" / "bpe", vocab_size)
    return data_dir
