"""Specification of WER/CER scoring (zipformer_fast/asr/wer.py): exact error counts on
hand-checked examples, corpus-level aggregation, per-utterance aligned text, edge cases."""
import pytest

from zipformer_fast.asr.wer import (align, char_error_rate, error_rate, per_utterance_errors,
                                    word_error_rate)


def test_identical_is_zero():
    a = align("the cat sat", "the cat sat")
    assert (a.sub, a.dele, a.ins, a.ref_len) == (0, 0, 0, 3)


def test_substitution_deletion_insertion_counts():
    a = align("the cat sat on the mat", "oh the bat sat on mat")
    # "oh" inserted, cat->bat (sub), "the" before mat deleted: the only 3-error alignment.
    assert (a.sub, a.dele, a.ins) == (1, 1, 1)
    assert a.errors == 3 and a.ref_len == 6


def test_empty_cases():
    assert align("", "a b").ins == 2
    assert align("a b", "").dele == 2
    assert error_rate([""], [""]).rate == 0.0
    assert error_rate([""], ["x"]).rate == float("inf")


def test_corpus_level_is_total_errors_over_total_reference_words():
    refs = ["a b c d", "e f"]
    hyps = ["a x c d", "e f g h"]
    stats = error_rate(refs, hyps)
    assert (stats.sub, stats.dele, stats.ins, stats.ref_len) == (1, 0, 2, 6)
    assert word_error_rate(refs, hyps) == pytest.approx(3 / 6)  # not the mean of 1/4 and 2/2
    assert str(stats) == "50.00% [3 / 6, 2 ins, 0 del, 1 sub]"


def test_char_error_rate_ignores_spaces():
    assert char_error_rate(["ab cd"], ["abd"]) == pytest.approx(1 / 4)


def test_token_lists_are_accepted():
    a = align([1, 2, 3], [1, 3])
    assert (a.sub, a.dele, a.ins) == (0, 1, 0)


def test_ties_prefer_substitutions():
    # "a b c" -> "a c d": 2 substitutions or 1 deletion + 1 insertion, both 2 errors.
    a = align("a b c", "a c d")
    assert (a.sub, a.dele, a.ins) == (2, 0, 0)


def test_per_utterance_aligned_text():
    rows = per_utterance_errors(["a b c d", "x"], ["a c d e", "x"], ids=["u1", "u2"])
    assert rows[0]["id"] == "u1" and rows[0]["errors"] == 2
    assert rows[0]["aligned"] == "a (b->*) c d (*->e)"
    assert rows[1]["errors"] == 0 and rows[1]["aligned"] == "x"


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        error_rate(["a", "b"], ["a"])
