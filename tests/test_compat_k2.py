"""zipformer_fast.compat.k2: k2's Swoosh and RNN-T loss functions without k2.

Checked two ways: (1) each function returns exactly what zipformer_fast's own implementation
returns (torch.equal); (2) k2's documented semantics on tiny hand-worked cases: losses against a
brute-force sum over every alignment path of the lattice (float64, so agreement is to 1e-10),
reductions "none" / "mean" / "sum", `boundary` (a shorter sequence in a padded batch equals the same
sequence unpadded), the regular / modified / constrained topologies, Swoosh values and derivatives
worked out by hand.
"""
import importlib
import math
import sys

import pytest
import torch

import zipformer_fast.compat.k2 as k2
from zipformer_fast.asr import rnnt_loss as ours
from zipformer_fast.ops import swoosh as ops_swoosh


# --------------------------------------------------------------------------------- brute force
def alignments(S, T, rnnt_type):
    """Every path from (0, 0) to (S, T) as a list of arcs ("sym" | "blank", s, t)."""
    def rec(s, t, acc):
        if (s, t) == (S, T):
            yield acc
            return
        if s < S and t < T:  # regular: no symbol on the one-past-last frame T
            yield from rec(s + 1, t + (rnnt_type != "regular"), acc + [("sym", s, t)])
        if t < T:
            yield from rec(s, t + 1, acc + [("blank", s, t)])
    return list(rec(0, 0, []))


def brute_force_loss(logp, y, blank, rnnt_type):
    """-log sum over alignments of prod arc probabilities; logp (T, S+1, C) log-probabilities."""
    T, S = logp.shape[0], len(y)
    totals = []
    for path in alignments(S, T, rnnt_type):
        score = 0.0
        for kind, s, t in path:
            if kind == "blank":
                score += float(logp[t, s, blank])
            else:
                score += float(logp[t, s, y[s]])
                if rnnt_type == "constrained":  # charged the new context's blank on the same frame
                    score += float(logp[t, s + 1, blank])
        totals.append(score)
    return -float(torch.logsumexp(torch.tensor(totals, dtype=torch.float64), 0))


def make_case(seed=0, B=2, T=4, S=2, C=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, S + 1, C, generator=g, dtype=torch.float64)
    symbols = torch.randint(1, C, (B, S), generator=g)
    # row 1: 1 symbol over 3 frames (padded to S=2, T=4)
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 1, 3]])
    return logits, symbols, boundary


def expected_per_sequence(logits, symbols, boundary, blank, rnnt_type):
    out = []
    for b in range(logits.shape[0]):
        s_end, t_end = int(boundary[b, 2]), int(boundary[b, 3])
        logp = logits[b, :t_end, :s_end + 1].log_softmax(-1)
        out.append(brute_force_loss(logp, symbols[b, :s_end].tolist(), blank, rnnt_type))
    return torch.tensor(out, dtype=torch.float64)


# ------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("rnnt_type", ["regular", "modified", "constrained"])
@pytest.mark.parametrize("blank", [0, 3])
def test_rnnt_loss_equals_the_sum_over_all_alignments(rnnt_type, blank):
    logits, symbols, boundary = make_case()
    expected = expected_per_sequence(logits, symbols, boundary, blank, rnnt_type)
    got = k2.rnnt_loss(logits, symbols, blank, boundary, rnnt_type, reduction="none")
    assert got.shape == (2,)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(k2.rnnt_loss(logits, symbols, blank, boundary, rnnt_type, reduction="sum"),
                               expected.sum(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(k2.rnnt_loss(logits, symbols, blank, boundary, rnnt_type),  # default "mean"
                               expected.mean(), rtol=1e-10, atol=1e-10)


def test_without_boundary_the_whole_padded_lattice_is_used():
    logits, symbols, _ = make_case(seed=1)
    full = torch.tensor([[0, 0, 2, 4]] * 2)
    torch.testing.assert_close(k2.rnnt_loss(logits, symbols, 0, reduction="none"),
                               expected_per_sequence(logits, symbols, full, 0, "regular"), rtol=1e-10, atol=1e-10)


def test_hand_worked_one_symbol_one_frame():
    """T=1, S=1, regular: the only path is symbol then blank on frame 0 -> -(log p0(y) + log p1(blank))."""
    logits = torch.tensor([[[[0.0, math.log(3.0)], [math.log(4.0), 0.0]]]], dtype=torch.float64)  # (1,1,2,2)
    symbols = torch.tensor([[1]])
    # p(s=0: y=1) = 3/4, p(s=1: blank=0) = 4/5
    assert k2.rnnt_loss(logits, symbols, 0).item() == pytest.approx(-math.log(3 / 4 * 4 / 5), abs=1e-12)


def test_simple_loss_is_the_full_loss_of_the_additive_joiner():
    g = torch.Generator().manual_seed(2)
    am, lm = torch.randn(2, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    _, symbols, boundary = make_case()
    logits = am[:, :, None, :] + lm[:, None, :, :]
    for rnnt_type in ("regular", "modified"):
        expected = expected_per_sequence(logits, symbols, boundary, 0, rnnt_type)
        got = k2.rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, reduction="none")
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    loss, (px_grad, py_grad) = k2.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="sum", return_grad=True)
    assert px_grad.shape == (2, 2, 5) and py_grad.shape == (2, 3, 4)
    # occupation probabilities: every frame of a valid sequence is left by exactly one blank arc
    torch.testing.assert_close(py_grad[0].sum(0), torch.ones(4, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_smoothed_loss_interpolates_combined_lm_only_and_am_only_lattices():
    g = torch.Generator().manual_seed(3)
    B, T, S, C = 2, 3, 2, 4
    am, lm = torch.randn(B, T, C, generator=g, dtype=torch.float64), torch.randn(B, S + 1, C, generator=g, dtype=torch.float64)
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = torch.tensor([[0, 0, S, T]] * B)
    a, b = 0.25, 0.1  # lm_only_scale, am_only_scale
    unigram = lm.softmax(-1).mean(dim=(0, 1))  # over every (b, s) position, as k2
    expected = []
    for i in range(B):
        combined = (am[i, :, None] + lm[i, None]).log_softmax(-1)  # (T, S+1, C)
        lm_only = lm[i].log_softmax(-1)[None].expand(T, S + 1, C)
        am_only = (am[i] + unigram.log() - (am[i].exp() @ unigram).log()[:, None])[:, None].expand(T, S + 1, C)
        logp = (1 - a - b) * combined + a * lm_only + b * am_only  # unnormalised mixture of log-probs
        expected.append(brute_force_loss(logp, symbols[i].tolist(), 0, "regular"))
    got = k2.rnnt_loss_smoothed(lm, am, symbols, 0, lm_only_scale=a, am_only_scale=b, boundary=boundary,
                                reduction="none")
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    no_smoothing = k2.rnnt_loss_smoothed(lm, am, symbols, 0, 0.0, 0.0, boundary, reduction="none")
    torch.testing.assert_close(no_smoothing, k2.rnnt_loss_simple(lm, am, symbols, 0, boundary, reduction="none"),
                               rtol=1e-12, atol=1e-12)


def test_pruning_with_a_range_covering_every_symbol_gives_the_full_loss():
    g = torch.Generator().manual_seed(4)
    B, T, S, C, D = 2, 5, 3, 6, 4
    am, lm = torch.randn(B, T, D, generator=g, dtype=torch.float64), torch.randn(B, S + 1, D, generator=g, dtype=torch.float64)
    proj = torch.randn(D, C, generator=g, dtype=torch.float64)
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 2, 4]])
    _, (px_grad, py_grad) = k2.rnnt_loss_simple(lm @ proj, am @ proj, symbols, 0, boundary, return_grad=True)
    ranges = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range=S + 1)
    assert ranges.dtype == torch.int64 and ranges.shape == (B, T, S + 1)
    assert torch.equal(ranges, torch.arange(S + 1).expand(B, T, S + 1))
    am_p, lm_p = k2.do_rnnt_pruning(am, lm, ranges)
    assert am_p.shape == lm_p.shape == (B, T, S + 1, D)
    assert torch.equal(am_p[:, :, 1], am) and torch.equal(lm_p[1, 2], lm[1])
    joiner = lambda a, l: torch.tanh(a + l) @ proj  # noqa: E731 -- any non-additive joiner
    pruned = k2.rnnt_loss_pruned(joiner(am_p, lm_p), symbols, ranges, 0, boundary, reduction="none")
    full = k2.rnnt_loss(joiner(am[:, :, None], lm[:, None]), symbols, 0, boundary, reduction="none")
    torch.testing.assert_close(pruned, full, rtol=1e-10, atol=1e-10)


def test_prune_ranges_are_monotonic_windows_ending_at_the_last_symbol():
    g = torch.Generator().manual_seed(5)
    B, T, S, C, R = 2, 8, 5, 7, 2
    am, lm = torch.randn(B, T, C, generator=g), torch.randn(B, S + 1, C, generator=g)
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 3, 6]])
    _, (px_grad, py_grad) = k2.rnnt_loss_simple(lm, am, symbols, 0, boundary, return_grad=True)
    ranges = k2.get_rnnt_prune_ranges(px_grad, py_grad, boundary, R)
    assert ranges.shape == (B, T, R)
    start = ranges[..., 0]
    assert torch.equal(ranges, start[..., None] + torch.arange(R))  # consecutive positions
    assert (start[:, 1:] >= start[:, :-1]).all() and (start[:, 1:] - start[:, :-1] <= R - 1).all()
    assert (start[:, 0] == 0).all() and (start <= S + 1 - R).all()
    assert int(ranges[0, T - 1, -1]) == S and int(ranges[1, 5, -1]) >= 3  # last valid frame reaches s_end
    pruned_am, pruned_lm = k2.do_rnnt_pruning(am, lm, ranges)
    loss = k2.rnnt_loss_pruned(pruned_am + pruned_lm, symbols, ranges, 0, boundary, reduction="none")
    assert torch.isfinite(loss).all()


def test_every_loss_function_returns_exactly_what_zipformer_fast_returns():
    g = torch.Generator().manual_seed(6)
    B, T, S, C = 2, 6, 3, 5
    am, lm = torch.randn(B, T, C, generator=g), torch.randn(B, S + 1, C, generator=g)
    symbols = torch.randint(1, C, (B, S), generator=g)
    boundary = torch.tensor([[0, 0, S, T], [0, 0, 2, 5]])
    for rnnt_type in ("regular", "modified"):
        a = k2.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary, rnnt_type, 0.0, "sum", True)
        b = ours.rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary, rnnt_type, 0.0, "sum", True)
        assert torch.equal(a[0], b[0]) and all(torch.equal(x, y) for x, y in zip(a[1], b[1]))
        assert torch.equal(k2.rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, 0.5),
                           ours.rnnt_loss_simple(lm, am, symbols, 0, boundary, rnnt_type, 0.5))
        ranges = k2.get_rnnt_prune_ranges(*a[1], boundary, 2)
        assert torch.equal(ranges, ours.get_rnnt_prune_ranges(*b[1], boundary, 2))
        logits = sum(k2.do_rnnt_pruning(am, lm, ranges))
        assert torch.equal(k2.rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, rnnt_type, reduction="none"),
                           ours.rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, rnnt_type, reduction="none"))
        full = am[:, :, None] + lm[:, None]
        assert torch.equal(k2.rnnt_loss(full, symbols, 0, boundary, rnnt_type),
                           ours.rnnt_loss(full, symbols, 0, boundary, rnnt_type))
        # k2's positional order for get_rnnt_logprobs_joint is (logits, symbols, blank, rnnt_type, boundary)
        px, py = k2.get_rnnt_logprobs_joint(full, symbols, 0, rnnt_type, boundary)
        px2, py2 = ours.get_rnnt_logprobs_joint(full, symbols, 0, boundary=boundary, rnnt_type=rnnt_type)
        assert torch.equal(px, px2) and torch.equal(py, py2)


def test_delay_penalty_acts_only_when_positive_as_in_k2():
    logits, symbols, boundary = make_case(seed=7)
    plain = k2.rnnt_loss(logits, symbols, 0, boundary, reduction="none")
    assert torch.equal(k2.rnnt_loss(logits, symbols, 0, boundary, delay_penalty=-0.5, reduction="none"), plain)
    assert not torch.equal(k2.rnnt_loss(logits, symbols, 0, boundary, delay_penalty=0.5, reduction="none"), plain)


def test_bad_arguments_raise_clear_errors():
    logits, symbols, boundary = make_case()
    with pytest.raises(ValueError, match="reduction"):
        k2.rnnt_loss(logits, symbols, 0, boundary, reduction="average")
    with pytest.raises(NotImplementedError, match="use_hat_loss"):
        k2.rnnt_loss_pruned(logits[:, :, :2], symbols, torch.zeros(2, 4, 2, dtype=torch.int64), 0, boundary,
                            use_hat_loss=True)


# ------------------------------------------------------------------------------------- Swoosh
def test_swoosh_hand_worked_values():
    x = torch.tensor([0.0, 1.0, 4.0, 100.0, -100.0])
    yl, dl = k2.swoosh_l_forward_and_deriv(x)
    yr, dr = k2.swoosh_r_forward_and_deriv(x)
    # SwooshL(0) = log(1 + e^-4) - 0.035; at x = 4 the softplus term is log 2; large |x|: linear pieces
    expected_l = [math.log1p(math.exp(-4)) - 0.035, math.log1p(math.exp(-3)) - 0.08 - 0.035,
                  math.log(2) - 0.32 - 0.035, 96 - 8 - 0.035, 8 - 0.035]
    expected_r = [0.0, math.log(2) - 0.08 - 0.313261687, math.log1p(math.exp(3)) - 0.32 - 0.313261687,
                  99 - 8 - 0.313261687, 8 - 0.313261687]
    torch.testing.assert_close(yl, torch.tensor(expected_l), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(yr, torch.tensor(expected_r), rtol=1e-6, atol=1e-6)
    # derivative 0.92 - 1 / (1 + e^(x - shift)): 0.42 at x = shift, -0.08 / 0.92 at the extremes
    assert dl[2].item() == pytest.approx(0.42, abs=1e-7) and dr[1].item() == pytest.approx(0.42, abs=1e-7)
    assert dl[3].item() == pytest.approx(0.92, abs=1e-7) and dl[4].item() == pytest.approx(-0.08, abs=1e-7)
    assert torch.equal(k2.swoosh_l_forward(x), yl) and torch.equal(k2.swoosh_r_forward(x), yr)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_swoosh_returns_float32_like_k2_and_equals_our_op(dtype):
    x = torch.linspace(-8, 8, 301).to(dtype)
    for fwd, op in ((k2.swoosh_l_forward, ops_swoosh.swoosh_l), (k2.swoosh_r_forward, ops_swoosh.swoosh_r)):
        y = fwd(x)
        assert y.dtype == torch.float32 and not y.requires_grad
        assert torch.equal(y, op(x.float()))
    assert k2.swoosh_l(x).dtype == torch.float32


def test_swoosh_backward_uses_the_8_bit_derivative():
    torch.manual_seed(0)
    x = (torch.randn(4000) * 4).requires_grad_(True)
    for fn, fwd_deriv in ((k2.swoosh_l, k2.swoosh_l_forward_and_deriv), (k2.swoosh_r, k2.swoosh_r_forward_and_deriv)):
        x.grad = None
        y = fn(x)
        assert torch.equal(y.detach(), fwd_deriv(x)[0])
        y.sum().backward()
        exact = fwd_deriv(x)[1]
        err = x.grad - exact
        assert err.abs().max() <= 1.005 / 255 + 1e-6  # one quantisation step
        assert err.abs().max() > 0  # quantised, not the exact derivative
        assert abs(err.mean().item()) < 2e-4  # stochastic rounding: unbiased


def test_swoosh_dropout():
    torch.manual_seed(0)
    x = torch.randn(20000, requires_grad=True)
    y = k2.swoosh_l(x, dropout_prob=0.25)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(y[kept], (k2.swoosh_l_forward(x) / 0.75)[kept])
    y.sum().backward()
    assert (x.grad[~kept] == 0).all()
    assert torch.equal(k2.swoosh_l(x.detach(), dropout_prob=0.25), k2.swoosh_l_forward(x))  # no grad: no dropout


# -------------------------------------------------------------------------------- installation
def test_install_makes_import_k2_use_this_module(monkeypatch):
    for name in ("k2", "k2.version", "k2.ragged"):
        # setitem-then-delitem: monkeypatch restores the absence too, so no other test sees our k2
        monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.delitem(sys.modules, name)
    assert k2.install() is k2
    import k2 as imported
    assert imported is k2 and imported.rnnt_loss_pruned is k2.rnnt_loss_pruned

    version = importlib.import_module("k2.version")  # icefall.env: import k2.version
    assert version is k2.version and version.__version__.endswith("zipformer_fast.compat")

    def annotated(x: imported.Fsa) -> imported.DenseFsaVec:  # what icefall modules do at import
        return x
    assert annotated(1) == 1 and not isinstance(1, imported.Fsa)
    with pytest.raises(NotImplementedError, match="Fsa"):
        imported.Fsa.from_str("0 1 1 0.0")
    with pytest.raises(NotImplementedError, match="ctc_graph"):
        imported.ctc_graph([[1]])
    with pytest.raises(AttributeError):
        imported.__version__  # dunder names are not faked
    other = object()
    monkeypatch.setitem(sys.modules, "k2", other)
    assert k2.install() is other  # a real k2 already imported is kept


# --------------------------------------------------------------------------- RaggedTensor
def test_ragged_tensor_does_what_icefalls_training_path_needs():
    """icefall train.py: y = k2.RaggedTensor(token_ids); model.py / icefall.utils.add_sos as below."""
    y = k2.RaggedTensor([[5, 3, 9], [7], []])
    assert y.num_axes == 2 and y.dim0 == 3 and y.dtype == torch.int32 and y.tot_size(1) == 4
    assert torch.equal(y.shape.row_splits(1), torch.tensor([0, 3, 4, 4], dtype=torch.int32))
    assert torch.equal(y.values, torch.tensor([5, 3, 9, 7], dtype=torch.int32))
    assert torch.equal(y.pad(mode="constant", padding_value=0), torch.tensor([[5, 3, 9], [7, 0, 0], [0, 0, 0]],
                                                                            dtype=torch.int32))
    # icefall.utils.concat(ragged, value=0, direction="left"), i.e. add_sos
    pad = k2.RaggedTensor(torch.full((y.tot_size(0), 1), 0, dtype=y.dtype))
    sos_y = k2.ragged.cat([pad, y], axis=1)
    assert sos_y.tolist() == [[0, 5, 3, 9], [0, 7], [0]]
    assert k2.ragged.cat([y, y], axis=0).tolist() == y.tolist() * 2  # cr-ctc doubles the batch
    assert y.to("cpu").tolist() == y.tolist() and repr(k2.RaggedTensor([[1, 3], [5]])) == "[ [ 1 3 ] [ 5 ] ]"
    with pytest.raises(ValueError, match="two axes"):
        k2.RaggedTensor([[[1]]])
