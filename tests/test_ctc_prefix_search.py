"""CTC prefix beam search and attention-decoder rescoring (zipformer_fast/asr/ctc_prefix_search.py):
with a beam wide enough to keep every prefix the search is exact, so each n-best score must equal
log P(y | x) from torch's CTC loss and the best must be the brute-force most probable labelling;
rescoring picks by first-pass + scale * attention log-prob; the transducer n-best starts with the
plain modified-beam-search answer; `decode` dispatches the new method names."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from zipformer_fast import use_backend
from zipformer_fast.asr.ctc_prefix_search import (attention_rescore, attention_scores,
                                                  ctc_prefix_beam_search, ctc_prefix_beam_search_nbest)
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.asr.search import (DECODING_METHODS, ctc_greedy_search, decode, decode_rescored,
                                       modified_beam_search)
from zipformer_fast.config import ZipformerConfig

from state_dict_layout import xs_model_with_every_head  # noqa: E402


def exact_log_prob(lp_bt, ys):
    """log P(ys) over all CTC alignments of lp_bt (T, V)."""
    if not ys:
        return lp_bt[:, 0].sum().item()
    loss = F.ctc_loss(lp_bt.unsqueeze(1), torch.tensor([ys]), torch.tensor([lp_bt.shape[0]]),
                      torch.tensor([len(ys)]), reduction="sum")
    return -loss.item()


def all_labellings(T, V):
    for n in range(T + 1):
        yield from (list(y) for y in itertools.product(range(1, V), repeat=n))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_prefix_search_is_exact(seed):
    torch.manual_seed(seed)
    T, V = 4, 3
    lp = torch.log_softmax(torch.randn(2, T, V, dtype=torch.float64), -1)
    lens = torch.tensor([4, 3])
    nbest = ctc_prefix_beam_search_nbest(lp, lens, beam=100)
    for b in range(2):
        n = int(lens[b])
        exact = {tuple(y): exact_log_prob(lp[b, :n], y) for y in all_labellings(n, V)}
        exact = {y: s for y, s in exact.items() if s > -math.inf}
        got = {tuple(y): s for y, s in nbest[b]}
        assert got.keys() == exact.keys()
        for y in exact:
            assert got[y] == pytest.approx(exact[y], rel=1e-9, abs=1e-12), y
        best = max(exact, key=exact.get)
        assert tuple(nbest[b][0][0]) == best
        assert [s for _, s in nbest[b]] == sorted((s for _, s in nbest[b]), reverse=True)


def test_narrow_beam_keeps_beam_hypotheses_and_peaked_input_equals_greedy():
    torch.manual_seed(3)
    lp = torch.log_softmax(torch.randn(3, 12, 6) * 8, -1)  # peaked: one path dominates
    lens = torch.tensor([12, 7, 1])
    nbest = ctc_prefix_beam_search_nbest(lp, lens, beam=3)
    assert all(1 <= len(n) <= 3 for n in nbest)
    assert ctc_prefix_beam_search(lp, lens, beam=3) == ctc_greedy_search(lp, lens)


def test_zero_length_utterance_gives_the_empty_hypothesis():
    lp = torch.log_softmax(torch.randn(1, 3, 4), -1)
    assert ctc_prefix_beam_search_nbest(lp, torch.tensor([0]), beam=2) == [[([], 0.0)]]


def test_prefix_search_bad_input():
    with pytest.raises(ValueError, match="beam"):
        ctc_prefix_beam_search(torch.zeros(1, 2, 3), torch.tensor([2]), beam=0)
    with pytest.raises(ValueError, match="outside"):
        ctc_prefix_beam_search(torch.zeros(1, 2, 3), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        ctc_prefix_beam_search(torch.zeros(2, 3), torch.tensor([2]))


class FixedScoreDecoder:
    """Attention-decoder stand-in whose log P(y) is a table lookup (nll spread on the first token)."""
    sos_id = eos_id = 1

    def __init__(self, table):
        self.table = table
        self.calls = []

    def nll(self, encoder_out, encoder_out_lens, token_ids):
        self.calls.append([list(y) for y in token_ids])
        out = torch.zeros(len(token_ids), 4)
        for i, y in enumerate(token_ids):
            out[i, 0] = -self.table[tuple(y)]
        return out


def test_attention_rescore_adds_scaled_attention_log_prob():
    nbest = [[([2, 3], -1.0), ([2], -1.5), ([2, 1], -0.5)], [([4], -2.0)]]
    aed = FixedScoreDecoder({(2, 3): -5.0, (2,): -1.0, (4,): -3.0})
    enc, lens = torch.zeros(2, 3, 2), torch.tensor([3, 3])
    scores = attention_scores(aed, enc, lens, nbest)
    assert scores == [[-5.0, -1.0, -math.inf], [-3.0]]  # [2, 1] holds <sos/eos>: not scored
    assert aed.calls == [[[2, 3], [2], [4]]]
    best = attention_rescore(aed, enc, lens, nbest, attention_scales=(0.0, 0.1, 1.0))
    assert best[0.0] == [[2, 1], [4]]     # scale 0: the first pass alone
    assert best[0.1] == [[2, 3], [4]]     # -1.5 vs -1.6
    assert best[1.0] == [[2], [4]]        # -6.0 vs -2.5
    only_special = attention_rescore(aed, enc[:1], lens[:1], [[([1], -1.0), ([2, 1], -0.7)]])
    assert only_special[1.0] == [[2, 1]]  # nothing scoreable: the first-pass best stays


@pytest.fixture(scope="module")
def xs_all_heads():
    return xs_model_with_every_head(vocab_size=20)


def test_transducer_nbest_starts_with_the_modified_beam_search_answer(xs_all_heads):
    torch.manual_seed(1)
    enc, lens = torch.randn(2, 6, 128), torch.tensor([6, 4])
    nbest = modified_beam_search(xs_all_heads, enc, lens, beam=3, return_nbest=True)
    assert [n[0][0] for n in nbest] == modified_beam_search(xs_all_heads, enc, lens, beam=3)
    assert all(1 <= len(n) <= 3 for n in nbest)


def test_decode_dispatches_every_method(xs_all_heads):
    torch.manual_seed(2)
    enc, lens = torch.randn(2, 6, 128), torch.tensor([6, 4])
    m = xs_all_heads
    with use_backend("reference"):
        for method in DECODING_METHODS:
            hyps = decode(m, enc, lens, method=method, beam=3)
            assert len(hyps) == 2 and all(isinstance(t, int) for h in hyps for t in h), method
        nbest = ctc_prefix_beam_search_nbest(m.ctc_output(enc), lens, beam=3)
        want = attention_rescore(m.attention_decoder, enc, lens, nbest, (0.5,))[0.5]
        got = decode_rescored(m, enc, lens, "ctc_prefix_beam_search_attention_decoder_rescoring",
                              beam=3, attention_scales=(0.5,))[0.5]
        assert got == want
    with pytest.raises(ValueError, match="attention decoder"):
        decode_rescored(AsrModel(ZipformerConfig.preset("XS"), vocab_size=20, use_ctc=True).eval(), enc, lens,
                        "ctc_prefix_beam_search_attention_decoder_rescoring")
    with pytest.raises(ValueError, match="expected one of"):
        decode(m, enc, lens, method="nope")
