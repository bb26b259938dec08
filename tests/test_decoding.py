"""Specification of decoding (zipformer_fast/asr/search.py) on tiny hand-built transducers whose
answers are known, plus exhaustive checks against exact sequence probabilities:

- TableDecoder: the decoder output is a table row chosen by the context tokens; AddJoiner:
  logits = encoder frame + decoder row (projections are identities). So every per-frame
  distribution is set by hand.
- P(y) under the one-symbol-per-frame topology is computed independently with the "modified"
  full RNN-T loss (itself checked against brute force in test_rnnt_loss.py)."""
import itertools
import math

import pytest
import torch
from torch import nn

from zipformer_fast.asr.rnnt_loss import rnnt_loss
from zipformer_fast.asr.search import (ctc_greedy_search, decode, greedy_search_batch,
                                       modified_beam_search)


class TableDecoder(nn.Module):
    """Decoder output = sum over the context positions k of table[k][token_k] (zero for -1)."""

    def __init__(self, tables, blank_id=0):
        super().__init__()
        self.tables = tables  # (context_size, V, V)
        self.context_size = tables.shape[0]
        self.blank_id = blank_id

    def forward(self, y, need_pad=True):
        assert not need_pad and y.shape[1] == self.context_size
        out = 0
        for k in range(self.context_size):
            out = out + self.tables[k][y[:, k].clamp(min=0)] * (y[:, k:k + 1] >= 0)
        return out.unsqueeze(1)  # (N, 1, V)


class AddJoiner(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder_proj = nn.Identity()
        self.decoder_proj = nn.Identity()

    def forward(self, enc, dec, project_input=True):
        return enc + dec


class TinyModel(nn.Module):
    def __init__(self, tables):
        super().__init__()
        self.decoder = TableDecoder(tables)
        self.joiner = AddJoiner()


def log(p):
    return torch.tensor(p, dtype=torch.float64).log()


def exact_log_prob(model, enc, y):
    """log P(y | enc) summed over all alignments with <= 1 symbol per frame."""
    c = model.decoder.context_size
    ctx = [-1] * (c - 1) + [model.decoder.blank_id]
    rows = []
    for s in range(len(y) + 1):
        hist = ctx + list(y[:s])
        rows.append(model.decoder(torch.tensor([hist[-c:]]), need_pad=False)[0, 0])
    lm = torch.stack(rows)  # (S+1, V)
    logits = enc[:, None, :] + lm[None, :, :]  # (T, S+1, V)
    symbols = torch.tensor([list(y)], dtype=torch.int64).reshape(1, len(y))
    return -rnnt_loss(logits[None], symbols, 0, rnnt_type="modified", reduction="none")[0]


def test_context_free_greedy_and_beam_read_off_frame_argmaxes():
    V = 4
    model = TinyModel(torch.zeros(1, V, V, dtype=torch.float64))
    frames = [0, 3, 3, 0, 2]  # peaked: logit 10 on these labels
    enc = torch.zeros(1, 5, V, dtype=torch.float64)
    enc[0, torch.arange(5), torch.tensor(frames)] = 10.0
    lens = torch.tensor([5])
    assert greedy_search_batch(model, enc, lens) == [[3, 3, 2]]
    assert modified_beam_search(model, enc, lens, beam=4) == [[3, 3, 2]]
    # The same frames read as CTC output collapse the repeat: 0 3 3 0 2 -> 3 2.
    assert ctc_greedy_search(enc, lens) == [[3, 2]]


def greedy_trap_model():
    """Frame 0 (start context): P = [.25, .40, .35]; greedy takes 1, after which frame 1 is flat
    (P(blank) = .34). Sequence [2] is far more likely: .35 * .98 + .25 * .90 = .568 versus
    P([1]) = .40 * .34 + .25 * .05 = .1485."""
    V = 3
    enc = torch.stack([log([0.25, 0.40, 0.35]), log([0.05, 0.05, 0.90])])[None]  # (1, 2, V)
    table = torch.zeros(1, V, V, dtype=torch.float64)  # context = the last token
    table[0, 1] = log([0.34, 0.33, 0.33]) - enc[0, 1]  # after 1, frame 1 is flat
    table[0, 2] = log([0.98, 0.01, 0.01]) - enc[0, 1]  # after 2, frame 1 is blank
    return TinyModel(table), enc


def test_beam_beats_greedy_where_greedy_is_trapped():
    model, enc = greedy_trap_model()
    lens = torch.tensor([2])
    greedy, g_score = greedy_search_batch(model, enc, lens, return_scores=True)
    beam, b_score = modified_beam_search(model, enc, lens, beam=4, return_scores=True)
    assert greedy == [[1]] and beam == [[2]]
    assert g_score[0] == pytest.approx(math.log(0.40 * 0.34), abs=1e-9)  # its one alignment
    assert b_score[0] == pytest.approx(math.log(0.568), abs=1e-9)  # two alignments merged
    assert exact_log_prob(model, enc[0], [2]) > exact_log_prob(model, enc[0], [1])


def random_model(V=3, c=2, D=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TinyModel(torch.randn(c, V, V, generator=g, dtype=torch.float64) * 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wide_beam_without_length_norm_is_exact_map(seed):
    """Nothing is pruned with beam >= number of hypotheses, so merging makes every score the exact
    P(y): the result must be the argmax over all label sequences, with the exact score."""
    V, T = 3, 4
    model = random_model(V, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    enc = torch.randn(1, T, V, generator=g, dtype=torch.float64) * 2
    (best,), (score,) = modified_beam_search(model, enc, torch.tensor([T]), beam=1000,
                                             length_norm=False, return_scores=True)
    candidates = [y for n in range(T + 1) for y in itertools.product(range(1, V), repeat=n)]
    exact = {y: exact_log_prob(model, enc[0], y).item() for y in candidates}
    map_y = max(exact, key=exact.get)
    assert tuple(best) == map_y
    assert score == pytest.approx(exact[map_y], abs=1e-9)
    # log-sum of all sequence probabilities is 0: the exact scores are a distribution.
    assert math.log(sum(math.exp(v) for v in exact.values())) == pytest.approx(0.0, abs=1e-9)
    greedy = greedy_search_batch(model, enc, torch.tensor([T]))[0]
    assert exact[tuple(best)] >= exact[tuple(greedy)]


def test_batched_equals_per_utterance_with_mixed_lengths():
    V, T = 5, 7
    model = random_model(V, seed=3)
    g = torch.Generator().manual_seed(4)
    enc = torch.randn(4, T, V, generator=g, dtype=torch.float64) * 3
    lens = torch.tensor([3, 7, 0, 5])
    for search in (greedy_search_batch, lambda m, e, n: modified_beam_search(m, e, n, beam=3)):
        batched = search(model, enc, lens)
        single = [search(model, enc[b:b + 1, :int(lens[b])], lens[b:b + 1])[0] for b in range(4)]
        assert batched == single
        assert batched[2] == []  # zero frames -> empty hypothesis


def test_ctc_greedy_collapse_and_lengths():
    V = 4
    path = torch.tensor([[1, 1, 0, 1, 2, 2, 0, 0], [3, 0, 3, 3, 0, 0, 0, 2]])
    logits = torch.nn.functional.one_hot(path, V).double()
    # Repeats separated by blank are kept; frames past the length are ignored.
    assert ctc_greedy_search(logits, torch.tensor([8, 4])) == [[1, 1, 2], [3, 3]]


def test_decode_dispatch_and_errors():
    model, enc = greedy_trap_model()
    lens = torch.tensor([2])
    assert decode(model, enc, lens, "greedy_search") == [[1]]
    assert decode(model, enc, lens, "modified_beam_search") == [[2]]
    with pytest.raises(ValueError, match="decoding method"):
        decode(model, enc, lens, "fast_beam_search")
    with pytest.raises(ValueError, match="encoder_out_lens"):
        greedy_search_batch(model, enc, torch.tensor([3]))
