"""Word/character error rates by Levenshtein alignment.

`align(ref, hyp)` returns the counts of a minimum-edit-distance alignment (substitutions,
deletions, insertions) plus the aligned pairs. The total is unique; when several optimal
alignments split it differently, the backtrace prefers match/substitution, then deletion, then
insertion.
`error_rate(refs, hyps)` is the corpus-level rate: total errors / total reference tokens, and
`per_utterance_errors` the per-utterance lists icefall writes into its errs-*.txt files.
Inputs are strings (split on whitespace, or into characters with unit="char") or token lists.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

Text = Union[str, Sequence[str]]


def _tokens(x: Text, unit: str) -> List[str]:
    if unit not in ("word", "char"):
        raise ValueError(f"unit={unit!r}: expected 'word' or 'char'")
    if isinstance(x, str):
        if unit == "word":
            return x.split()
        return [ch for ch in x if not ch.isspace()]
    return list(x)


@dataclass
class Alignment:
    ref_len: int
    sub: int = 0
    dele: int = 0
    ins: int = 0
    # (ref token or None, hyp token or None) pairs in order; None marks an ins/del gap.
    pairs: List[Tuple[Optional[str], Optional[str]]] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins


def align(ref: Text, hyp: Text, unit: str = "word") -> Alignment:
    """Minimum-edit-distance alignment of two token sequences."""
    r, h = _tokens(ref, unit), _tokens(hyp, unit)
    n, m = len(r), len(h)
    # cost[i][j] = edits to turn r[:i] into h[:j]; O(n m) tables are fine for utterances.
    cost = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        cost[i][0] = i
    for j in range(1, m + 1):
        cost[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            cost[i][j] = min(cost[i - 1][j - 1] + (r[i - 1] != h[j - 1]),
                             cost[i - 1][j] + 1, cost[i][j - 1] + 1)
    out = Alignment(ref_len=n)
    i, j = n, m
    while i > 0 or j > 0:
        # Prefer the diagonal (match/substitution) when it is optimal.
        if i > 0 and j > 0 and cost[i][j] == cost[i - 1][j - 1] + (r[i - 1] != h[j - 1]):
            out.sub += r[i - 1] != h[j - 1]
            out.pairs.append((r[i - 1], h[j - 1]))
            i, j = i - 1, j - 1
        elif i > 0 and cost[i][j] == cost[i - 1][j] + 1:
            out.dele += 1
            out.pairs.append((r[i - 1], None))
            i -= 1
        else:
            out.ins += 1
            out.pairs.append((None, h[j - 1]))
            j -= 1
    out.pairs.reverse()
    return out


@dataclass
class ErrorStats:
    ref_len: int
    sub: int
    dele: int
    ins: int

    @property
    def errors(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Errors / reference tokens (a percentage is 100 x this). inf if the references are
        empty but the hypotheses are not; 0 if both are empty."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_len

    def __str__(self) -> str:
        return (f"{100 * self.rate:.2f}% [{self.errors} / {self.ref_len}, {self.ins} ins, "
                f"{self.dele} del, {self.sub} sub]")


def error_rate(refs: Sequence[Text], hyps: Sequence[Text], unit: str = "word") -> ErrorStats:
    """Corpus-level WER (unit="word") or CER (unit="char")."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    totals = [0, 0, 0, 0]
    for ref, hyp in zip(refs, hyps):
        a = align(ref, hyp, unit)
        for k, v in enumerate((a.ref_len, a.sub, a.dele, a.ins)):
            totals[k] += v
    return ErrorStats(*totals)


def word_error_rate(refs: Sequence[Text], hyps: Sequence[Text]) -> float:
    return error_rate(refs, hyps, "word").rate


def char_error_rate(refs: Sequence[Text], hyps: Sequence[Text]) -> float:
    return error_rate(refs, hyps, "char").rate


def per_utterance_errors(refs: Sequence[Text], hyps: Sequence[Text], ids: Optional[Sequence[str]] = None,
                         unit: str = "word") -> List[dict]:
    """One dict per utterance with id, counts and icefall-style aligned text, where errors are
    written (ref->hyp), (*->hyp) for insertions and (ref->*) for deletions."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    ids = list(ids) if ids is not None else [str(k) for k in range(len(refs))]
    rows = []
    for uid, ref, hyp in zip(ids, refs, hyps):
        a = align(ref, hyp, unit)
        words = []
        for rt, ht in a.pairs:
            if rt == ht:
                words.append(rt)
            else:
                words.append(f"({'*' if rt is None else rt}->{'*' if ht is None else ht})")
        rows.append(dict(id=uid, ref_len=a.ref_len, sub=a.sub, dele=a.dele, ins=a.ins,
                         errors=a.errors, aligned=" ".join(words)))
    return rows
