"""Prepare LibriSpeech from a local copy (icefall's data preparation, offline).

    python -m recipes.librispeech.prepare --corpus-dir /data/LibriSpeech --data-dir data/librispeech \
        [--parts train-clean-100 dev-clean test-clean ...] [--num-jobs 8]

Writes manifests/cuts_<part>.jsonl.gz with 80-dim Fbank (train parts 3-way speed perturbed, as
icefall), manifests/cuts_train.jsonl.gz (all train parts, shuffled), cuts_dev (dev-clean + dev-other
when present) and lang/bpe.model (unigram, vocab 500, trained on the training transcripts).
No network: lhotse's prepare_librispeech reads the extracted corpus directory.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

TRAIN = ["train-clean-100", "train-clean-360", "train-other-500"]
EVAL = ["dev-clean", "dev-other", "test-clean", "test-other"]


def prepare(args) -> None:
    from zipformer_fast.data.manifests import compute_fbank, speed_perturb
    from zipformer_fast.data.optional import require
    from zipformer_fast.data.tokenizer import train_bpe

    lhotse = require("lhotse")
    from lhotse.recipes import prepare_librispeech

    corpus = Path(args.corpus_dir)
    if not corpus.is_dir():
        raise FileNotFoundError(f"LibriSpeech directory {corpus} not found (extract the corpus there; "
                                "it should contain e.g. train-clean-100/ and test-clean/)")
    parts = [p for p in args.parts if (corpus / p).is_dir()]
    missing = sorted(set(args.parts) - set(parts))
    if missing:
        print(f"[prepare] not found in {corpus}, skipped: {' '.join(missing)}")
    if not any(p in TRAIN for p in parts):
        raise FileNotFoundError(f"no training part ({', '.join(TRAIN)}) under {corpus}")
    out = Path(args.data_dir)
    man = out / "manifests"
    man.mkdir(parents=True, exist_ok=True)
    manifests = prepare_librispeech(corpus, dataset_parts=parts, output_dir=man / "raw", num_jobs=args.num_jobs)
    train_cuts, texts = [], []
    for part in parts:
        target = man / f"cuts_{part}.jsonl.gz"
        if not target.is_file():
            cuts = lhotse.CutSet.from_manifests(**manifests[part]).trim_to_supervisions(keep_overlapping=False)
            if part in TRAIN and args.speed_perturb:
                cuts = speed_perturb(cuts, (0.9, 1.1))
            cuts = compute_fbank(cuts, man / f"feats_{part}", num_jobs=args.num_jobs, progress_bar=True)
            cuts.to_file(target)
        if part in TRAIN:
            train_cuts.append(target)
            texts += [s.text for s in manifests[part]["supervisions"]]
    combine(train_cuts, man / "cuts_train.jsonl.gz", shuffle=True)
    combine([man / f"cuts_{p}.jsonl.gz" for p in ("dev-clean", "dev-other") if p in parts], man / "cuts_dev.jsonl.gz")
    train_bpe(texts, out / "lang" / "bpe", vocab_size=args.vocab_size, model_type="unigram")
    print(f"[prepare] done: {man}, {out / 'lang' / 'bpe.model'}")


def combine(paths, target: Path, shuffle: bool = False) -> None:
    from zipformer_fast.data.manifests import load_cuts
    if not paths:
        return
    cuts = load_cuts(paths[0])
    for p in paths[1:]:
        cuts = cuts + load_cuts(p)
    if shuffle:
        cuts = cuts.shuffle(random.Random(42))
    cuts.to_file(target)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", required=True, help="the extracted LibriSpeech/ directory")
    p.add_argument("--data-dir", default="data/librispeech")
    p.add_argument("--parts", nargs="+", default=TRAIN + EVAL)
    p.add_argument("--speed-perturb", type=int, default=1)
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--num-jobs", type=int, default=8)
    args = p.parse_args(argv)
    try:
        prepare(args)
    except (FileNotFoundError, ImportError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
