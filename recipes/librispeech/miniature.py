"""A miniature LibriSpeech in the real corpus' exact layout, spoken by espeak-ng, for trying the
recipe (and testing it) without the 60 GB download.

    python -m recipes.librispeech.miniature --out-dir /tmp/mini    # -> /tmp/mini/LibriSpeech

Layout, as extracted from openslr.org/12: LibriSpeech/<part>/<speaker>/<chapter>/ holding
<speaker>-<chapter>-<utt>.flac (16 kHz, 16 bit, mono) and <speaker>-<chapter>.trans.txt (one
"<speaker>-<chapter>-<utt> UPPER CASE TRANSCRIPT" line per utterance), plus the top-level
SPEAKERS.TXT / CHAPTERS.TXT. Speakers are the synthetic recipe's espeak-ng voices (disjoint
between training, dev and test parts) and sentences come from its word list.
"""
from __future__ import annotations

import argparse
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Tuple

from recipes.synthetic import wordlist
from recipes.synthetic.prepare import check_tools, synthesize

# part -> (speakers, chapters per speaker, utterances per chapter)
DEFAULT_PARTS: Dict[str, Tuple[int, int, int]] = {
    "train-clean-100": (2, 2, 12), "dev-clean": (2, 1, 4), "test-clean": (2, 1, 4)}


def make_miniature_librispeech(out_dir, parts: Dict[str, Tuple[int, int, int]] = None, seed: int = 0,
                               jobs: int = 4) -> Path:
    """Synthesize the corpus under <out_dir>/LibriSpeech and return that directory."""
    check_tools()
    parts = dict(DEFAULT_PARTS if parts is None else parts)
    root = Path(out_dir) / "LibriSpeech"
    voices = dict(zip(("train", "dev", "test"), wordlist.split_speakers(seed=seed)))
    total = sum(s * c * u for s, c, u in parts.values())
    sentences = iter(wordlist.make_sentences(total, seed=seed))
    rng = random.Random(seed)
    jobs_list, speakers_txt, chapters_txt = [], [], []
    next_speaker = 100
    for part, (n_spk, n_chap, n_utt) in parts.items():
        kind = "train" if part.startswith("train") else part.split("-")[0]
        for k in range(n_spk):
            spk, voice = next_speaker, voices[kind][k % len(voices[kind])]
            next_speaker += 1
            speakers_txt.append(f"{spk:<5}| {'MF'[k % 2]} | {part:<16}| 0.00 | {voice}")
            for c in range(n_chap):
                chap = 1000 * spk + c
                chapters_txt.append(f"{chap:<7}| {spk:<5}| 0.00 | {part:<16}| 0 | 0 | synthetic | synthetic")
                chapter_dir = root / part / str(spk) / str(chap)
                chapter_dir.mkdir(parents=True, exist_ok=True)
                lines = []
                for u in range(n_utt):
                    uid = f"{spk}-{chap}-{u:04d}"
                    text = next(sentences)
                    lines.append(f"{uid} {text.upper()}")
                    utt = dict(id=uid, text=text.lower(), speaker=voice,
                               speed=rng.randint(*wordlist.SPEED_RANGE),
                               pitch=rng.randint(*wordlist.PITCH_RANGE), gain_db=round(rng.uniform(-6.0, 0.0), 1))
                    jobs_list.append((utt, chapter_dir / f"{uid}.flac"))
                (chapter_dir / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    with ThreadPoolExecutor(jobs) as pool:  # espeak-ng | sox subprocesses: threads are enough
        list(pool.map(lambda j: synthesize(*j), jobs_list))
    (root / "SPEAKERS.TXT").write_text("; ID | SEX | SUBSET | MINUTES | NAME\n" + "\n".join(speakers_txt) + "\n")
    (root / "CHAPTERS.TXT").write_text("; ID | READER | MINUTES | SUBSET | PROJ. | BOOK ID | CH. TITLE | PROJECT TITLE\n"
                                       + "\n".join(chapters_txt) + "\n")
    return root


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True, help="the corpus goes to <out-dir>/LibriSpeech")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=4)
    args = p.parse_args(argv)
    root = make_miniature_librispeech(args.out_dir, seed=args.seed, jobs=args.jobs)
    print(f"[miniature] {root}")


if __name__ == "__main__":
    main()
