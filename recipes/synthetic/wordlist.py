"""The synthetic corpus' fixed vocabulary, its speakers (espeak-ng voice + variant), and the
deterministic sentence generator.

100 common words with no homophones inside the list (no FOUR/FOR, EIGHT/ATE, ...), so every
transcript is recoverable from the audio. Sentences are 3-6 words drawn uniformly: there is no
grammar to exploit, the acoustic model has to recognise every word.
"""
from __future__ import annotations

import random
from typing import List, Tuple

WORDS = """
APPLE BANANA ORANGE GREEN BLUE RED YELLOW PURPLE BLACK WHITE
ONE THREE FOUR FIVE SIX SEVEN EIGHT NINE TEN TWELVE
DOG CAT HORSE MOUSE BIRD FISH TIGER MONKEY RABBIT SNAKE
HOUSE GARDEN WINDOW DOOR TABLE CHAIR KITCHEN BOTTLE CUP PLATE
RUN WALK JUMP SWIM READ WRITE SING DANCE OPEN CLOSE
BIG SMALL HAPPY QUICK SLOW WARM COLD LOUD QUIET BRIGHT
MORNING EVENING NIGHT SUMMER WINTER RIVER MOUNTAIN FOREST OCEAN CITY
TRAIN PLANE BOAT TRUCK BICYCLE ROCKET BRIDGE STREET MARKET SCHOOL
DOCTOR TEACHER FARMER PILOT SINGER PAINTER DRIVER SAILOR BAKER PLAYER
COFFEE WATER BREAD CHEESE SUGAR BUTTER PEPPER HONEY LEMON POTATO
""".split()

# espeak-ng English voices (accents) x variants (timbre); a speaker is one (voice, variant) pair.
VOICES = ["en-us", "en-gb", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-scotland"]
VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "f5", "klatt"]

SPEED_RANGE = (130, 190)   # espeak-ng -s, words per minute
PITCH_RANGE = (30, 70)     # espeak-ng -p, 0..99


def speakers() -> List[str]:
    return [f"{v}+{var}" for v in VOICES for var in VARIANTS]


def split_speakers(seed: int = 0, n_dev: int = 6, n_test: int = 6) -> Tuple[List[str], List[str], List[str]]:
    """Disjoint train/dev/test speakers; held-out speakers are new voice+variant pairs (each accent
    and timbre also occurs in training, so the test is of generalisation, not of an unseen accent)."""
    spk = speakers()
    rng = random.Random(seed)
    rng.shuffle(spk)
    return spk[n_dev + n_test:], spk[:n_dev], spk[n_dev:n_dev + n_test]


def make_sentences(n: int, seed: int = 0, min_words: int = 3, max_words: int = 6) -> List[str]:
    """`n` distinct sentences; the same (n, seed) always gives the same list."""
    if n > 10 ** 6:
        raise ValueError(f"n={n}: too many sentences")
    rng = random.Random(seed)
    seen, out = set(), []
    while len(out) < n:
        s = " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out
