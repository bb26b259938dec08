"""Sentencepiece tokenizer: icefall's id layout and a lossless round trip on the training text."""
import pytest

pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

from zipformer_fast.data.tokenizer import Tokenizer, train_bpe  # noqa: E402

TEXTS = [" ".join(w) for w in [["RED", "GREEN", "BLUE"], ["ONE", "TWO", "RED"], ["CAT", "DOG", "SUN", "MOON"],
                                ["GREEN", "CAT", "TWO"], ["BLUE", "MOON", "ONE", "DOG"]]] * 5


def test_special_ids_follow_icefall(tmp_path):
    tok = Tokenizer(train_bpe(TEXTS, tmp_path / "bpe", vocab_size=30))
    assert tok.blank_id == 0 and tok.sp.id_to_piece(0) == "<blk>"
    assert tok.sos_id == tok.eos_id == 1 and tok.sp.id_to_piece(1) == "<sos/eos>"
    assert tok.unk_id == 2
    assert 4 <= tok.vocab_size <= 30


@pytest.mark.parametrize("model_type", ["unigram", "bpe", "char"])
def test_round_trip_and_no_blank_in_targets(tmp_path, model_type):
    tok = Tokenizer(train_bpe(TEXTS, tmp_path / "bpe", vocab_size=30, model_type=model_type))
    ids = tok.encode(TEXTS[:5])
    assert all(0 not in seq and 1 not in seq and 2 not in seq for seq in ids)
    assert tok.decode(ids) == TEXTS[:5]
    assert tok.decode(ids[0]) == TEXTS[0]


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="sentencepiece model"):
        Tokenizer(tmp_path / "missing.model")
    with pytest.raises(ValueError, match="no non-empty transcripts"):
        train_bpe(["", "  "], tmp_path / "bpe", vocab_size=30)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(TEXTS, tmp_path / "bpe", vocab_size=3)


def test_missing_optional_package_names_the_install_command():
    from zipformer_fast.data.optional import require
    with pytest.raises(ImportError, match=r"pip install"):
        require("zipformer_fast_no_such_package_xyz")
