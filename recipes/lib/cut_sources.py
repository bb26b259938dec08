"""Which lhotse cut manifests a run reads: a recipe's prepared data (`--manifest-dir`, files named
cuts_<split>.jsonl.gz) or the user's own manifests (`--train-cuts`, `--valid-cuts`, `--test-cuts`),
and where the MUSAN noise cuts come from."""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple


def train_and_valid_cuts(args):
    """(training cuts, validation cuts or None), lazy and unfiltered."""
    from zipformer_fast.data import load_cuts, load_split
    if args.train_cuts:
        train = load_cuts(args.train_cuts, lazy=True)
    else:
        train = load_split(args.manifest_dir, args.train_split, lazy=True)
    if args.valid_cuts:
        valid = load_cuts(args.valid_cuts, lazy=True)
    elif args.valid_split and args.manifest_dir:
        valid = load_split(args.manifest_dir, args.valid_split, lazy=True)
    else:
        valid = None
    return train, valid


def musan_manifest(args) -> Optional[str]:
    """The MUSAN cut manifest to mix in, or None (existence is checked when it is loaded)."""
    if args.musan_cuts:
        return str(args.musan_cuts)
    if args.enable_musan:
        return str(Path(args.manifest_dir) / "musan_cuts.jsonl.gz")
    return None


def split_name(path) -> str:
    """The name results are filed under for a cut manifest: cuts_test-clean.jsonl.gz -> test-clean."""
    name = Path(path).name
    name = re.sub(r"\.(jsonl|json|yaml|yml)(\.gz)?$", "", name)
    return re.sub(r"^(\w+_)?cuts_", "", name) or name


def test_sets(args) -> List[Tuple[str, object]]:
    """[(name, lazy cuts)] for decoding: --test-cuts files, else --splits of --manifest-dir."""
    from zipformer_fast.data import load_cuts, load_split
    if args.test_cuts:
        return [(split_name(p), load_cuts(p, lazy=True)) for p in args.test_cuts]
    return [(s, load_split(args.manifest_dir, s, lazy=True)) for s in args.splits]
