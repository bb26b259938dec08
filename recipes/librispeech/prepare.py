"""Prepare LibriSpeech from a local copy: icefall's egs/librispeech/ASR/prepare.sh stages, offline.

    python -m recipes.librispeech.prepare --corpus-dir /data/LibriSpeech --data-dir data/librispeech \
        [--musan-dir /data/musan] [--stage 1 --stop-stage 4] [--parts train-clean-100 dev-clean ...]

Stages (numbered as in recipes/librispeech/run.sh). Each one is skipped when its outputs exist,
and every output file is written under a temporary name and renamed when complete, so an
interrupted stage is simply run again:
  1  lhotse manifests (lhotse's prepare_librispeech)
       -> manifests/raw/librispeech_{recordings,supervisions}_<part>.jsonl.gz
  2  MUSAN noise cuts with Fbank, only with --musan-dir (icefall's compute_fbank_musan.py)
       -> manifests/musan_cuts.jsonl.gz
  3  cuts per part; training parts 3-way speed perturbed (0.9 / 1.0 / 1.1); 80-dim Fbank stored
     on disk (or, with --precompute-fbank 0, computed on the fly by recipes.train)
       -> manifests/cuts_<part>.jsonl.gz, cuts_train.jsonl.gz (all training parts, shuffled),
          cuts_dev.jsonl.gz (dev-clean + dev-other)
  4  sentencepiece model (unigram, --vocab-size 500) on the training transcripts -> lang/bpe.model
The settings an output depends on are recorded in manifests/prepare.json; running again with
different ones stops with an error instead of mixing old and new data.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import sys
from pathlib import Path
from typing import Dict, List

TRAIN = ["train-clean-100", "train-clean-360", "train-other-500"]
EVAL = ["dev-clean", "dev-other", "test-clean", "test-other"]
CORPUS_HINT = "download it from https://www.openslr.org/12 (or `lhotse download librispeech --full DIR`) and extract it"


def log(msg: str) -> None:
    print(f"[prepare] {msg}", flush=True)


class Stamp:
    """manifests/prepare.json: the settings each finished output was made with."""

    def __init__(self, man: Path):
        self.path = man / "prepare.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def check(self, key: str, settings: dict, outputs: List[Path]) -> None:
        old = self.data.get(key)
        if old is not None and old != settings and any(p.exists() for p in outputs):
            raise ValueError(f"{outputs[0].parent} holds {key} prepared with {old}, now asked for {settings}: "
                             f"delete {', '.join(str(p) for p in outputs if p.exists())} or use another --data-dir")

    def record(self, key: str, settings: dict) -> None:
        self.data[key] = settings
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


def write_cuts(cuts, target: Path) -> None:
    tmp = target.with_name(target.name.replace(".jsonl.gz", ".tmp.jsonl.gz"))
    cuts.to_file(tmp)
    os.replace(tmp, target)


def available_parts(corpus: Path, parts: List[str]) -> List[str]:
    if not corpus.is_dir():
        raise FileNotFoundError(f"LibriSpeech directory {corpus} not found: {CORPUS_HINT}; --corpus-dir is the "
                                "LibriSpeech/ directory holding train-clean-100/, test-clean/, ...")
    found = [p for p in parts if (corpus / p).is_dir()]
    missing = [p for p in parts if p not in found]
    if missing:
        log(f"not in {corpus}, skipped: {' '.join(missing)}")
    if not any(p in TRAIN for p in found):
        raise FileNotFoundError(f"no training part ({', '.join(TRAIN)}) under {corpus}: {CORPUS_HINT}")
    return found


def raw_manifests(man: Path, parts: List[str]) -> Dict[str, dict]:
    from lhotse.recipes.utils import read_manifests_if_cached
    got = read_manifests_if_cached(dataset_parts=parts, output_dir=man / "raw", prefix="librispeech") or {}
    missing = [p for p in parts if p not in got]
    if missing:
        raise FileNotFoundError(f"lhotse manifests for {' '.join(missing)} not in {man / 'raw'}: run stage 1 "
                                "(--stage 1) first")
    return got


def stage_manifests(args, corpus: Path, man: Path, parts: List[str]) -> None:
    from lhotse.recipes import prepare_librispeech
    log("stage 1: lhotse manifests")
    # lhotse skips the parts whose manifests are already in output_dir.
    prepare_librispeech(corpus, dataset_parts=parts, output_dir=man / "raw", num_jobs=args.num_jobs)


def stage_musan(args, man: Path) -> None:
    from zipformer_fast.data import musan_cuts
    target = man / "musan_cuts.jsonl.gz"
    if not args.musan_dir:
        log("stage 2: no --musan-dir, MUSAN skipped (train without --enable-musan)")
        return
    if target.is_file():
        log(f"stage 2: {target} exists, skipped")
        return
    log(f"stage 2: MUSAN cuts + Fbank from {args.musan_dir}")
    write_cuts(musan_cuts(args.musan_dir, man / "feats_musan", num_jobs=args.num_jobs), target)


def stage_cuts(args, man: Path, parts: List[str], stamp: Stamp) -> None:
    import lhotse
    from zipformer_fast.data import compute_fbank, speed_perturb
    settings = {"speed_perturb": bool(args.speed_perturb), "precompute_fbank": bool(args.precompute_fbank)}
    targets = {p: man / f"cuts_{p}.jsonl.gz" for p in parts}
    combined = [man / "cuts_train.jsonl.gz", man / "cuts_dev.jsonl.gz"]
    stamp.check("cuts", settings, list(targets.values()) + combined)
    stamp.record("cuts", settings)
    manifests, rebuilt = None, set()
    for part, target in targets.items():
        if target.is_file():
            log(f"stage 3: {target.name} exists, skipped")
            continue
        manifests = manifests or raw_manifests(man, parts)
        # LibriSpeech has one utterance per recording, so a cut per recording is a cut per utterance.
        cuts = lhotse.CutSet.from_manifests(**manifests[part])
        if part in TRAIN and args.speed_perturb:
            cuts = speed_perturb(cuts, (0.9, 1.1))
        if args.precompute_fbank:
            cuts = compute_fbank(cuts, man / f"feats_{part}", num_jobs=args.num_jobs, progress_bar=True)
        write_cuts(cuts, target)
        rebuilt.add(target)
        log(f"stage 3: {target.name}: {len(cuts)} cuts, {sum(c.duration for c in cuts) / 3600:.2f} h")
    train = [targets[p] for p in parts if p in TRAIN]
    dev = [targets[p] for p in ("dev-clean", "dev-other") if p in parts]
    for name, sources, shuffle in (("train", train, True), ("dev", dev, False)):
        target = man / f"cuts_{name}.jsonl.gz"
        key = f"cuts_{name}"
        wanted = sorted(p.name for p in sources)
        if target.is_file() and stamp.data.get(key) == wanted and not rebuilt.intersection(sources):
            log(f"stage 3: {target.name} exists, skipped")
            continue
        if sources:
            concatenate(sources, target, shuffle)
            stamp.record(key, wanted)
            log(f"stage 3: {target.name} from {' '.join(wanted)}")


def concatenate(sources: List[Path], target: Path, shuffle: bool) -> None:
    """icefall's `cat <(gunzip -c a) <(gunzip -c b) | shuf | gzip`: whole manifest lines, so the cuts
    are never parsed (LibriSpeech's 843k perturbed cuts would take GBs as Python objects)."""
    lines = []
    for src in sources:
        with gzip.open(src, "rb") as f:
            lines += [line if line.endswith(b"\n") else line + b"\n" for line in f if line.strip()]
    if shuffle:
        random.Random(42).shuffle(lines)
    tmp = target.with_name(target.name.replace(".jsonl.gz", ".tmp.jsonl.gz"))
    with gzip.open(tmp, "wb") as f:
        f.writelines(lines)
    os.replace(tmp, target)


def stage_bpe(args, out: Path, man: Path, parts: List[str], stamp: Stamp) -> None:
    from zipformer_fast.data import train_bpe
    target = out / "lang" / "bpe.model"
    settings = {"vocab_size": args.vocab_size, "model_type": "unigram", "parts": [p for p in parts if p in TRAIN]}
    stamp.check("bpe", settings, [target])
    if target.is_file():
        log(f"stage 4: {target} exists, skipped")
        return
    texts = [s.text for p in settings["parts"] for s in raw_manifests(man, [p])[p]["supervisions"]]
    tmp = out / "lang" / "bpe-unfinished"
    train_bpe(texts, tmp, vocab_size=args.vocab_size, model_type="unigram")
    for suffix in (".vocab", ".model"):  # the model last: its presence marks the stage done
        os.replace(tmp.with_suffix(suffix), target.with_suffix(suffix))
    stamp.record("bpe", settings)
    log(f"stage 4: {target} ({len(texts)} transcripts)")


def prepare(args) -> None:
    from zipformer_fast.data import require
    require("lhotse", "LibriSpeech preparation")
    import torch
    torch.set_num_threads(1)  # per-utterance Fbank: extra intra-op threads only add overhead (icefall: 1)
    out = Path(args.data_dir)
    man = out / "manifests"
    man.mkdir(parents=True, exist_ok=True)
    stamp = Stamp(man)
    stages = range(args.stage, args.stop_stage + 1)
    if 1 in stages:
        parts = available_parts(Path(args.corpus_dir), args.parts) if args.corpus_dir else None
        if parts is None:
            raise FileNotFoundError(f"stage 1 needs --corpus-dir (the extracted LibriSpeech/): {CORPUS_HINT}")
        stamp.record("parts", parts)
    parts = stamp.data.get("parts")
    if parts is None and any(s in stages for s in (3, 4)):
        raise FileNotFoundError(f"{man} has no prepared parts: run stage 1 (with --corpus-dir) first")
    if 1 in stages:
        stage_manifests(args, Path(args.corpus_dir), man, parts)
    if 2 in stages:
        stage_musan(args, man)
    if 3 in stages:
        stage_cuts(args, man, parts, stamp)
    if 4 in stages:
        stage_bpe(args, out, man, parts, stamp)
    log(f"done: stages {args.stage}-{args.stop_stage} in {out}")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus-dir", default=None, help="the extracted LibriSpeech/ directory (needed by stage 1)")
    p.add_argument("--data-dir", default="data/librispeech")
    p.add_argument("--musan-dir", default=None, help="the extracted musan/ directory (stage 2; optional)")
    p.add_argument("--parts", nargs="+", default=TRAIN + EVAL, help="parts to use when present")
    p.add_argument("--speed-perturb", type=int, default=1, help="add 0.9x and 1.1x copies of the training cuts")
    p.add_argument("--precompute-fbank", type=int, default=1,
                   help="1: store Fbank on disk (icefall); 0: write cuts without features (Fbank on the fly)")
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--num-jobs", type=int, default=min(15, os.cpu_count() or 1),
                   help="Fbank worker processes (fewer for small parts)")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop-stage", type=int, default=4)
    return p


def main(argv=None) -> None:
    args = get_parser().parse_args(argv)
    try:
        prepare(args)
    except (FileNotFoundError, ImportError, ValueError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
