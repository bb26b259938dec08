"""Specification of the RNN-T losses (zipformer_fast/asr/rnnt_loss.py), k2 semantics:
- the full loss equals brute-force enumeration of alignments from log_softmax(logits), for the
  regular, modified and constrained topologies (float64, atol 1e-10);
- simple loss == full loss with additive logits; smoothed with zero scales == simple;
- pruned == full when the range covers every position, pruned >= full for narrow ranges;
- a padded batch (boundary) equals per-utterance results, empty transcripts included;
- gradients by gradcheck (float64) and the icefall pipeline smoothed -> ranges -> pruned."""
import itertools

import pytest
import torch

from zipformer_fast.asr.rnnt_loss import (
    do_rnnt_pruning,
    get_rnnt_prune_ranges,
    rnnt_loss,
    rnnt_loss_pruned,
    rnnt_loss_simple,
    rnnt_loss_smoothed,
)

TYPES = ["regular", "modified", "constrained"]


def brute_force_nll(logits, y, rnnt_type, blank=0, delay_penalty=0.0):
    """-log sum over alignments, one utterance. logits (T, S+1, C), y list of S ids.
    delay_penalty adds λ((T-1)/2 - t) to every symbol emitted on frame t (k2's definition)."""
    lp = torch.log_softmax(logits, dim=-1)
    T, S = lp.shape[0], len(y)
    lp = lp.clone()
    for t in range(T):
        bonus = delay_penalty * ((T - 1) / 2 - t)
        for s in range(S):
            lp[t, s, y[s]] += bonus
    totals = []
    if rnnt_type == "regular":
        # S symbol moves and T blank moves in any order (the last move is the final blank).
        for sym_pos in itertools.combinations(range(S + T - 1), S):
            s = t = 0
            acc = lp.new_zeros(())
            for step in range(S + T):
                if step in sym_pos:
                    acc = acc + lp[t, s, y[s]]
                    s += 1
                else:
                    acc = acc + lp[t, s, blank]
                    t += 1
            totals.append(acc)
    else:
        # One move per frame: a symbol (also consumes the frame) or a blank.
        for sym_frames in itertools.combinations(range(T), S):
            s = 0
            acc = lp.new_zeros(())
            for t in range(T):
                if t in sym_frames:
                    acc = acc + lp[t, s, y[s]]
                    if rnnt_type == "constrained":
                        acc = acc + lp[t, s + 1, blank]
                    s += 1
                else:
                    acc = acc + lp[t, s, blank]
            totals.append(acc)
    if not totals:
        return torch.tensor(float("inf"), dtype=logits.dtype)
    return -torch.logsumexp(torch.stack(totals), 0)


def padded_batch(lengths, T_lens, C=5, seed=0, dtype=torch.float64):
    """Random logits (B, T, S+1, C) and symbols padded with 0, plus the boundary."""
    g = torch.Generator().manual_seed(seed)
    B, S, T = len(lengths), max(lengths), max(T_lens)
    logits = torch.randn(B, T, S + 1, C, generator=g, dtype=dtype)
    symbols = torch.zeros(B, S, dtype=torch.int64)
    for b, n in enumerate(lengths):
        symbols[b, :n] = torch.randint(1, C, (n,), generator=g)
    boundary = torch.zeros(B, 4, dtype=torch.int64)
    boundary[:, 2] = torch.tensor(lengths)
    boundary[:, 3] = torch.tensor(T_lens)
    return logits, symbols, boundary


@pytest.mark.parametrize("rnnt_type", TYPES)
@pytest.mark.parametrize("S,T", [(0, 1), (0, 3), (1, 1), (2, 3), (3, 4)])
def test_full_loss_equals_brute_force(rnnt_type, S, T):
    logits, symbols, _ = padded_batch([S, S], [T, T], seed=S * 7 + T)
    got = rnnt_loss(logits, symbols, 0, rnnt_type=rnnt_type, reduction="none")
    want = torch.stack([brute_force_nll(logits[b], symbols[b].tolist(), rnnt_type)
                        for b in range(2)])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_padded_batch_equals_per_utterance(rnnt_type):
    lengths, T_lens = [3, 0, 2], [5, 4, 3]
    logits, symbols, boundary = padded_batch(lengths, T_lens, seed=3)
    got = rnnt_loss(logits, symbols, 0, boundary=boundary, rnnt_type=rnnt_type, reduction="none")
    for b, (n, T) in enumerate(zip(lengths, T_lens)):
        want = rnnt_loss(logits[b:b + 1, :T, :n + 1], symbols[b:b + 1, :n], 0,
                         rnnt_type=rnnt_type, reduction="none")
        torch.testing.assert_close(got[b:b + 1], want, rtol=0, atol=1e-12)
        want_bf = brute_force_nll(logits[b, :T, :n + 1], symbols[b, :n].tolist(), rnnt_type)
        torch.testing.assert_close(got[b], want_bf, rtol=0, atol=1e-10)


def test_empty_transcript_is_sum_of_blank_logprobs():
    logits, symbols, boundary = padded_batch([0, 2], [4, 4], seed=9)
    loss = rnnt_loss(logits, symbols, 0, boundary=boundary, reduction="none")
    want = -torch.log_softmax(logits[0, :, 0], -1)[:, 0].sum()
    torch.testing.assert_close(loss[0], want, rtol=0, atol=1e-12)


def test_reductions():
    logits, symbols, boundary = padded_batch([2, 1], [3, 3], seed=1)
    per = rnnt_loss(logits, symbols, 0, boundary=boundary, reduction="none")
    assert per.shape == (2,)
    torch.testing.assert_close(rnnt_loss(logits, symbols, 0, boundary, reduction="sum"), per.sum())
    torch.testing.assert_close(rnnt_loss(logits, symbols, 0, boundary, reduction="mean"), per.mean())
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss(logits, symbols, 0, boundary, reduction="avg")


@pytest.mark.parametrize("rnnt_type", ["modified", "constrained"])
def test_modified_requires_T_ge_S(rnnt_type):
    logits, symbols, boundary = padded_batch([3, 1], [2, 2], seed=0)
    with pytest.raises(ValueError, match="requires T >= S"):
        rnnt_loss(logits, symbols, 0, rnnt_type=rnnt_type)
    with pytest.raises(ValueError, match="row 0 has T=2, S=3"):
        rnnt_loss(logits, symbols, 0, boundary=boundary, rnnt_type=rnnt_type)


def lm_am(B, S, T, C, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, S + 1, C, generator=g, dtype=dtype) * 2,
            torch.randn(B, T, C, generator=g, dtype=dtype) * 2)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_simple_equals_full_with_additive_logits(rnnt_type):
    lengths, T_lens = [3, 1, 2], [5, 3, 4]
    _, symbols, boundary = padded_batch(lengths, T_lens, C=6, seed=2)
    lm, am = lm_am(3, 3, 5, 6, seed=2)
    simple = rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, reduction="none")
    logits = am[:, :, None, :] + lm[:, None, :, :]
    full = rnnt_loss(logits, symbols, 0, boundary, rnnt_type, reduction="none")
    torch.testing.assert_close(simple, full, rtol=0, atol=1e-10)


def test_simple_loss_invariant_to_per_frame_and_per_position_constants():
    _, symbols, boundary = padded_batch([2, 3], [4, 5], C=6, seed=4)
    lm, am = lm_am(2, 3, 5, 6, seed=4)
    base = rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none")
    shifted = rnnt_loss_simple(lm + torch.randn(2, 4, 1, dtype=lm.dtype) * 5,
                               am + torch.randn(2, 5, 1, dtype=am.dtype) * 5,
                               symbols, 0, boundary, reduction="none")
    torch.testing.assert_close(shifted, base, rtol=0, atol=1e-10)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_smoothed_with_zero_scales_equals_simple(rnnt_type):
    _, symbols, boundary = padded_batch([2, 3], [4, 5], C=6, seed=5)
    lm, am = lm_am(2, 3, 5, 6, seed=5)
    a = rnnt_loss_smoothed(lm, am, symbols, 0, 0.0, 0.0, boundary, rnnt_type, reduction="none")
    b = rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, reduction="none")
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_smoothed_lm_only_scale_one_is_lm_only_loss():
    """With lm_only_scale = 1 the lattice only sees lm: loss = -sum_s log P_lm(y_s|s) -
    sum_t log P_lm(blank|S) ... here checked against a brute-force path sum of the LM-only
    arc weights (independent of t)."""
    _, symbols, boundary = padded_batch([2], [3], C=4, seed=6)
    lm, am = lm_am(1, 2, 3, 4, seed=6)
    loss = rnnt_loss_smoothed(lm, am, symbols, 0, 1.0, 0.0, boundary, reduction="none")
    logits = lm[:, None, :, :].expand(1, 3, 3, 4)  # the same LM distribution on every frame
    want = brute_force_nll(logits[0], symbols[0].tolist(), "regular")
    torch.testing.assert_close(loss[0], want, rtol=0, atol=1e-8)  # 1e-20 am-only leak


def tanh_joiner(B, T, S1, D=8, C=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    enc = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    dec = torch.randn(B, S1, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, C, generator=g, dtype=torch.float64) * 2
    return enc, dec, (lambda e, d: torch.tanh(e + d) @ w)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_pruned_equals_full_when_range_covers_everything(rnnt_type):
    lengths, T_lens = [4, 2, 3], [6, 4, 5]
    _, symbols, boundary = padded_batch(lengths, T_lens, C=6, seed=8)
    B, S = symbols.shape
    enc, dec, joiner = tanh_joiner(B, 6, S + 1, seed=8)
    full = rnnt_loss(joiner(enc[:, :, None], dec[:, None]), symbols, 0, boundary, rnnt_type,
                     reduction="none")
    lm, am = lm_am(B, S, 6, 6, seed=9)
    _, (gx, gy) = rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, return_grad=True)
    ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=S + 1)
    assert torch.equal(ranges, torch.arange(S + 1).expand(B, 6, S + 1))
    e, d = do_rnnt_pruning(enc, dec, ranges)
    pruned = rnnt_loss_pruned(joiner(e, d), symbols, ranges, 0, boundary, rnnt_type,
                              reduction="none")
    torch.testing.assert_close(pruned, full, rtol=0, atol=1e-10)


def test_pruned_is_an_upper_bound_converging_to_full():
    lengths, T_lens = [6, 4, 2], [8, 7, 5]
    _, symbols, boundary = padded_batch(lengths, T_lens, C=6, seed=10)
    B, S = symbols.shape
    enc, dec, joiner = tanh_joiner(B, 8, S + 1, seed=10)
    full = rnnt_loss(joiner(enc[:, :, None], dec[:, None]), symbols, 0, boundary,
                     reduction="none")
    lm, am = lm_am(B, S, 8, 6, seed=10)
    _, (gx, gy) = rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary, return_grad=True)
    previous = None
    for R in (2, 3, 4, 7):
        ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=R)
        e, d = do_rnnt_pruning(enc, dec, ranges)
        pruned = rnnt_loss_pruned(joiner(e, d), symbols, ranges, 0, boundary, reduction="none")
        assert torch.isfinite(pruned).all()
        assert (pruned >= full - 1e-10).all()
        previous = pruned
    torch.testing.assert_close(previous, full, rtol=0, atol=1e-10)  # R = 7 = S + 1


@pytest.mark.parametrize("regular", [True, False])
def test_prune_ranges_are_monotonic_skip_free_and_end_on_the_last_symbol(regular):
    lengths, T_lens = [9, 5, 0, 3], [12, 12, 6, 10]
    _, symbols, boundary = padded_batch(lengths, T_lens, C=7, seed=12)
    B, S = symbols.shape
    lm, am = lm_am(B, S, 12, 7, seed=12)
    rt = "regular" if regular else "modified"
    _, (gx, gy) = rnnt_loss_simple(lm, am, symbols, 0, boundary, rt, return_grad=True)
    R = 4
    ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=R)
    assert ranges.shape == (B, 12, R) and ranges.dtype == torch.int64
    start = ranges[:, :, 0]
    step = start[:, 1:] - start[:, :-1]
    assert (start[:, 0] == 0).all() and (step >= 0).all()
    assert (step <= (R - 1 if regular else 1)).all()
    assert (ranges <= S).all()
    for b, (n, T) in enumerate(zip(lengths, T_lens)):
        assert ranges[b, T - 1, 0] <= n <= ranges[b, T - 1, -1]


def test_prune_range_raised_when_T_smaller_than_S_regular():
    _, symbols, boundary = padded_batch([6], [2], C=6, seed=13)
    lm, am = lm_am(1, 6, 2, 6, seed=13)
    _, (gx, gy) = rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    with pytest.warns(UserWarning, match="too small"):
        ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=2)
    assert ranges.shape[-1] == 4  # ceil(6 / 2) + 1


def test_all_empty_batch_prunes_to_position_zero():
    _, symbols, boundary = padded_batch([0, 0], [3, 2], C=5, seed=14)
    lm, am = lm_am(2, 0, 3, 5, seed=14)
    simple, (gx, gy) = rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary,
                                          reduction="none", return_grad=True)
    ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=5)
    assert torch.equal(ranges, torch.zeros(2, 3, 1, dtype=torch.int64))
    logits = torch.randn(2, 3, 1, 5, dtype=torch.float64)
    pruned = rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, reduction="none")
    want = torch.stack([-torch.log_softmax(logits[b, :T, 0], -1)[:, 0].sum()
                        for b, T in enumerate([3, 2])])
    torch.testing.assert_close(pruned, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_gradcheck_full_and_simple(rnnt_type):
    _, symbols, boundary = padded_batch([2, 1], [3, 2], C=4, seed=15)
    g = torch.Generator().manual_seed(15)
    logits = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    # fast_mode checks J·v for random v (a full Jacobian is ~10x slower here).
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss(x, symbols, 0, boundary, rnnt_type, reduction="none"), (logits,),
        fast_mode=True)
    lm, am = lm_am(2, 2, 3, 4, seed=16)
    lm.requires_grad_()
    am.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: rnnt_loss_smoothed(a, b, symbols, 0, 0.25, 0.1, boundary, rnnt_type,
                                        reduction="none"), (lm, am), fast_mode=True)


def test_gradcheck_pruned():
    _, symbols, boundary = padded_batch([3, 2], [5, 4], C=4, seed=17)
    lm, am = lm_am(2, 3, 5, 4, seed=17)
    _, (gx, gy) = rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    ranges = get_rnnt_prune_ranges(gx, gy, boundary, s_range=2)
    logits = torch.randn(2, 5, 2, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: rnnt_loss_pruned(x, symbols, ranges, 0, boundary, reduction="none"), (logits,))


def test_half_inputs_computed_in_float32():
    _, symbols, boundary = padded_batch([2, 1], [3, 3], C=5, seed=18)
    lm, am = lm_am(2, 2, 3, 5, seed=18, dtype=torch.float32)
    ref = rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none")
    got = rnnt_loss_simple(lm.bfloat16(), am.bfloat16(), symbols, 0, boundary, reduction="none")
    assert got.dtype == torch.float32
    # Only the bf16 rounding of the inputs differs (~2^-8 relative on O(4) logits).
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.1)


@pytest.mark.parametrize("rnnt_type", TYPES)
def test_delay_penalty_equals_brute_force(rnnt_type):
    lengths, T_lens = [2, 1], [4, 3]
    logits, symbols, boundary = padded_batch(lengths, T_lens, seed=19)
    got = rnnt_loss(logits, symbols, 0, boundary, rnnt_type, delay_penalty=0.7, reduction="none")
    for b, (n, T) in enumerate(zip(lengths, T_lens)):
        want = brute_force_nll(logits[b, :T, :n + 1], symbols[b, :n].tolist(), rnnt_type,
                               delay_penalty=0.7)
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-10)


def test_bad_inputs():
    logits, symbols, boundary = padded_batch([2], [3], seed=0)
    with pytest.raises(ValueError, match="rnnt_type"):
        rnnt_loss(logits, symbols, 0, rnnt_type="hat")
    bad = symbols.clone()
    bad[0, 1] = -1
    with pytest.raises(ValueError, match="pad with 0, not -1"):
        rnnt_loss(logits, bad, 0)
    with pytest.raises(ValueError, match="symbols must be int64"):
        rnnt_loss(logits, symbols.int(), 0)
