"""Sentencepiece tokenizer with icefall's id layout: <blk> = 0 (transducer/CTC blank),
<sos/eos> = 1, <unk> = 2, no bos/eos pieces.

`train_bpe` trains the model from transcripts (icefall's `local/train_bpe_model.py` settings);
`Tokenizer` wraps a trained model for encoding targets and decoding hypotheses.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, List, Sequence, Union

from .optional import require

BLANK, SOS_EOS, UNK = "<blk>", "<sos/eos>", "<unk>"


def train_bpe(texts: Iterable[str], model_prefix: Union[str, Path], vocab_size: int,
              model_type: str = "unigram", character_coverage: float = 1.0) -> Path:
    """Train `<model_prefix>.model` from `texts` and return its path.

    model_type: "unigram" is what icefall's lang_bpe_500 uses; "bpe" and "char" also work.
    The vocabulary limit is soft: a tiny corpus that cannot fill `vocab_size` pieces gets fewer
    (read the real size from `Tokenizer.vocab_size`) instead of failing.
    """
    spm = require("sentencepiece", "training the BPE tokenizer")
    if vocab_size < 4:
        raise ValueError(f"vocab_size={vocab_size}: need room for <blk>, <sos/eos>, <unk> and one piece")
    model_prefix = Path(model_prefix)
    model_prefix.parent.mkdir(parents=True, exist_ok=True)
    lines = [t.strip() for t in texts if t and t.strip()]
    if not lines:
        raise ValueError("train_bpe: no non-empty transcripts given")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
        transcript = f.name
    try:
        spm.SentencePieceTrainer.train(
            input=transcript, model_prefix=str(model_prefix), model_type=model_type,
            vocab_size=vocab_size, character_coverage=character_coverage,
            input_sentence_size=100_000_000, user_defined_symbols=[BLANK, SOS_EOS],
            unk_id=2, bos_id=-1, eos_id=-1, hard_vocab_limit=False,
            minloglevel=2,  # sentencepiece is chatty on stderr; errors still raise
        )
    finally:
        os.unlink(transcript)
    return model_prefix.with_suffix(".model")


class Tokenizer:
    """Encode transcripts to token ids and decode ids back to text."""

    def __init__(self, model_path: Union[str, Path]):
        spm = require("sentencepiece", "the BPE tokenizer")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise FileNotFoundError(f"sentencepiece model {model_path} not found (train it with train_bpe "
                                    "or the recipe's prepare step)")
        self.path = model_path
        self.sp = spm.SentencePieceProcessor()
        self.sp.load(str(model_path))
        self.blank_id = self.sp.piece_to_id(BLANK)
        self.sos_id = self.eos_id = self.sp.piece_to_id(SOS_EOS)
        self.unk_id = self.sp.unk_id()
        if self.blank_id != 0:
            raise ValueError(f"{model_path}: <blk> must have id 0 (got {self.blank_id}); "
                             "train it with zipformer_fast.data.tokenizer.train_bpe")

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: Union[str, Sequence[str]]) -> Union[List[int], List[List[int]]]:
        if isinstance(texts, str):
            return self.sp.encode(texts, out_type=int)
        return self.sp.encode(list(texts), out_type=int)

    def decode(self, ids: Union[Sequence[int], Sequence[Sequence[int]]]) -> Union[str, List[str]]:
        if len(ids) > 0 and not isinstance(ids[0], int):
            return [self.sp.decode([int(i) for i in seq]) for seq in ids]
        return self.sp.decode([int(i) for i in ids])


def main(argv=None) -> None:
    """`python -m zipformer_fast.data.tokenizer --cuts train.jsonl.gz --output lang/bpe`: a BPE model
    with this layout from the transcripts of any lhotse cut (or supervision) manifests."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--cuts", nargs="+", required=True, help="lhotse cut or supervision manifests")
    p.add_argument("--output", required=True, help="model prefix: writes <output>.model and <output>.vocab")
    p.add_argument("--vocab-size", type=int, default=500)
    p.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char"])
    args = p.parse_args(argv)
    lhotse = require("lhotse", "reading transcripts from cut manifests")

    def texts():
        for path in args.cuts:
            for item in lhotse.load_manifest_lazy(path):
                for sup in getattr(item, "supervisions", [item]):
                    yield sup.text

    print(train_bpe(texts(), args.output, args.vocab_size, model_type=args.model_type))


if __name__ == "__main__":
    main()
