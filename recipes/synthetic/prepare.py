"""Prepare the synthetic corpus: synthesize with espeak-ng, resample with sox, write lhotse
manifests with 80-dim Fbank, and train the sentencepiece tokenizer.

    python -m recipes.synthetic.prepare --data-dir data/synthetic [--train-sentences 1000 ...]

Splits are disjoint in sentences AND in speakers (see wordlist.split_speakers). Every output is
deterministic given the arguments; a finished stage is skipped when run again with the same
arguments (recorded in <data-dir>/prepare.json).
Outputs: wav/<split>/*.wav, manifests/cuts_{train,dev,test}.jsonl.gz (+ features), lang/bpe.model.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

import torch

from . import wordlist

TOOLS_HINT = "install them with: sudo bash recipes/synthetic/ensure_tools.sh  (Debian/Ubuntu: apt-get install espeak-ng sox)"


def check_tools() -> None:
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if missing:
        raise RuntimeError(f"the synthetic recipe needs {' and '.join(missing)} on PATH; {TOOLS_HINT}")


def plan_utterances(args) -> Dict[str, List[dict]]:
    """Which sentence each speaker says, at which speed/pitch/gain, per split."""
    n_tr, n_dev, n_te = args.train_sentences, args.dev_sentences, args.test_sentences
    sents = wordlist.make_sentences(n_tr + n_dev + n_te, seed=args.seed)
    spk_tr, spk_dev, spk_te = wordlist.split_speakers(seed=args.seed)
    rng = random.Random(args.seed + 1)
    plan = {}
    for split, sentences, spks, reps in (
            ("train", sents[:n_tr], spk_tr, args.train_repeats),
            ("dev", sents[n_tr:n_tr + n_dev], spk_dev, 1),
            ("test", sents[n_tr + n_dev:], spk_te, args.test_repeats)):
        utts = []
        for i, text in enumerate(sentences):
            for spk in rng.sample(spks, reps):
                utts.append(dict(
                    id=f"{split}-{i:05d}-{spk.replace('+', '_')}", text=text, speaker=spk,
                    speed=rng.randint(*wordlist.SPEED_RANGE), pitch=rng.randint(*wordlist.PITCH_RANGE),
                    gain_db=round(rng.uniform(-12.0, 0.0), 1)))
        plan[split] = utts
    return plan


def synthesize(utt: dict, wav: Path) -> None:
    """espeak-ng (22.05 kHz) -> sox -> 16 kHz 16-bit mono wav with the utterance's gain."""
    espeak = subprocess.Popen(
        ["espeak-ng", "-v", utt["speaker"], "-s", str(utt["speed"]), "-p", str(utt["pitch"]),
         "--stdout", utt["text"]], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sox = subprocess.run(["sox", "-t", "wav", "-", "-r", "16000", "-b", "16", "-c", "1", str(wav),
                          "gain", str(utt["gain_db"])], stdin=espeak.stdout, capture_output=True)
    espeak.stdout.close()
    err = espeak.stderr.read()
    if espeak.wait() != 0 or sox.returncode != 0:
        raise RuntimeError(f"synthesis of {utt['id']} failed: espeak-ng: {err.decode()[-300:]!r} "
                           f"sox: {sox.stderr.decode()[-300:]!r}")


def write_manifests(data_dir: Path, plan: Dict[str, List[dict]], speed_perturb_train: bool = False) -> None:
    """manifests/cuts_<split>.jsonl.gz with Fbank for wavs at wav/<split>/<id>.wav."""
    from zipformer_fast.data import Utterance, compute_fbank, cuts_from_utterances, speed_perturb
    man = data_dir / "manifests"
    man.mkdir(parents=True, exist_ok=True)
    for split, utts in plan.items():
        cuts = cuts_from_utterances(
            Utterance(u["id"], data_dir / "wav" / split / f"{u['id']}.wav", u["text"], u.get("speaker"))
            for u in utts)
        if split == "train" and speed_perturb_train:
            cuts = speed_perturb(cuts, (0.9, 1.1))
        cuts = compute_fbank(cuts, man / f"feats_{split}", num_jobs=1)
        cuts.to_file(man / f"cuts_{split}.jsonl.gz")
        hours = sum(c.duration for c in cuts) / 3600
        print(f"[prepare] {split}: {len(cuts)} cuts, {hours:.2f} h")


def prepare(args) -> Path:
    from zipformer_fast.data import train_bpe

    check_tools()
    # Per-utterance Fbank is tiny work; torch's intra-op threads only add spin-wait overhead here
    # (measured ~10x slower on a busy 2-core machine with the default thread count).
    torch.set_num_threads(1)
    data_dir = Path(args.data_dir)
    stamp_path = data_dir / "prepare.json"
    settings = {k: v for k, v in vars(args).items() if k not in ("data_dir", "jobs")}
    if stamp_path.is_file() and json.loads(stamp_path.read_text()) == settings:
        print(f"[prepare] {data_dir} is up to date")
        return data_dir
    if data_dir.exists():
        for sub in ("wav", "manifests", "lang"):
            shutil.rmtree(data_dir / sub, ignore_errors=True)
    t0 = time.time()
    plan = plan_utterances(args)
    jobs = []
    for split, utts in plan.items():
        (data_dir / "wav" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(u, data_dir / "wav" / split / f"{u['id']}.wav") for u in utts]
    with ThreadPoolExecutor(args.jobs) as pool:  # subprocesses: threads are enough
        list(pool.map(lambda j: synthesize(*j), jobs))
    t1 = time.time()
    print(f"[prepare] synthesized {len(jobs)} utterances in {t1 - t0:.1f}s")

    write_manifests(data_dir, plan, speed_perturb_train=bool(args.speed_perturb))
    print(f"[prepare] manifests + fbank in {time.time() - t1:.1f}s")
    train_bpe((u["text"] for u in plan["train"]), data_dir / "lang" / "bpe", args.vocab_size,
              model_type=args.bpe_type)
    stamp_path.write_text(json.dumps(settings, indent=1))
    print(f"[prepare] done in {time.time() - t0:.1f}s")
    return data_dir


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default="data/synthetic")
    p.add_argument("--train-sentences", type=int, default=1000)
    p.add_argument("--train-repeats", type=int, default=3, help="speakers per training sentence")
    p.add_argument("--dev-sentences", type=int, default=100)
    p.add_argument("--test-sentences", type=int, default=100)
    p.add_argument("--test-repeats", type=int, default=2, help="speakers per test sentence")
    p.add_argument("--speed-perturb", type=int, default=1, help="add 0.9x/1.1x copies of the training cuts")
    p.add_argument("--vocab-size", type=int, default=128)
    p.add_argument("--bpe-type", default="unigram", choices=["unigram", "bpe", "char"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=4, help="parallel synthesis processes")
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    try:
        prepare(args)
    except (RuntimeError, FileNotFoundError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
