"""CR-CTC (zipformer_fast/asr/cr_ctc.py): the consistency loss against a hand-computed KL, its
gradient (the other copy is a stop-gradient target), the halved CTC term against torch's CTC on
both copies, clear errors for targets longer than the frames, the two-view SpecAugment, icefall's
loss weights (CR warm-up, CTC + AED scales) and AsrModel.forward with CR-CTC and AED."""
import math

import pytest
import torch
import torch.nn.functional as F

from zipformer_fast import use_backend
from zipformer_fast.asr.cr_ctc import (CrCtcAugment, check_ctc_lengths, consistency_loss, cr_ctc_loss,
                                       ctc_required_frames)
from zipformer_fast.asr.ctc import ctc_loss
from zipformer_fast.asr.loss_weights import LossWeights
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig

from state_dict_layout import xs_model_with_every_head  # noqa: E402


def log_probs(B, T, V, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.log_softmax(torch.randn(B, T, V, dtype=dtype), dim=-1)


def hand_kl(lp, lens):
    """sum over rows b, frames t < lens[b], classes v of p_o (log p_o - log p), o = the other copy."""
    B, T, V = lp.shape
    total = 0.0
    for b in range(B):
        o = (b + B // 2) % B
        for t in range(int(lens[b])):
            for v in range(V):
                po = math.exp(lp[o, t, v])
                total += po * (float(lp[o, t, v]) - float(lp[b, t, v]))
    return total


def test_consistency_loss_matches_hand_kl():
    lp = log_probs(4, 3, 5)
    lens = torch.tensor([3, 2, 3, 2])
    assert consistency_loss(lp, lens).item() == pytest.approx(hand_kl(lp, lens), rel=1e-12)
    # Frames past a row's length do not count: changing them changes nothing.
    lp2 = lp.clone()
    lp2[1, 2] = torch.log_softmax(torch.randn(5, dtype=torch.float64), -1)
    lp2[3, 2] = torch.log_softmax(torch.randn(5, dtype=torch.float64), -1)
    assert consistency_loss(lp2, lens).item() == pytest.approx(consistency_loss(lp, lens).item(), rel=1e-12)


def test_consistency_loss_is_zero_for_identical_copies_and_positive_otherwise():
    lp = log_probs(2, 4, 3)
    same = torch.cat([lp, lp])
    assert consistency_loss(same, torch.tensor([4, 3, 4, 3])).item() == pytest.approx(0.0, abs=1e-12)
    assert consistency_loss(log_probs(4, 4, 3, seed=1), torch.tensor([4, 3, 4, 3])).item() > 0


def test_consistency_gradient_treats_the_other_copy_as_a_constant():
    lp = log_probs(4, 3, 5).requires_grad_(True)
    lens = torch.tensor([3, 1, 2, 3])
    consistency_loss(lp, lens).backward()
    # d/d lp[b] of sum p_o (log p_o - lp[b]) = -p_o on valid frames, 0 elsewhere.
    other = torch.roll(lp.detach(), 2, dims=0).exp()
    valid = (torch.arange(3).unsqueeze(0) < lens.unsqueeze(1)).unsqueeze(-1)
    torch.testing.assert_close(lp.grad, torch.where(valid, -other, torch.zeros_like(other)), rtol=0, atol=1e-14)


def test_consistency_and_ctc_terms_gradcheck_float64():
    # With the second copy's lengths 0 its own KL terms vanish, so the loss is a plain function
    # of the first copy (the second is the fixed target) and gradcheck applies.
    target = log_probs(2, 3, 4, seed=2)
    lens = torch.tensor([3, 2, 0, 0])
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: consistency_loss(torch.cat([torch.log_softmax(x, -1), target]), lens), (x,))
    y = torch.randn(4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y: cr_ctc_loss(torch.log_softmax(y, -1), torch.tensor([4, 3, 4, 3]), [[1, 2], [3]])[0], (y,))


def test_cr_ctc_loss_is_half_of_ctc_on_both_copies_and_half_the_kl():
    lp = log_probs(4, 6, 5).requires_grad_(True)
    lens = torch.tensor([6, 5, 6, 4])
    targets = [[1, 2, 2], [3]]
    ctc, cr = cr_ctc_loss(lp, lens, targets)
    want_ctc = F.ctc_loss(lp.permute(1, 0, 2), torch.tensor([1, 2, 2, 3, 1, 2, 2, 3]), lens,
                          torch.tensor([3, 1, 3, 1]), reduction="sum")
    assert ctc.item() == pytest.approx(0.5 * want_ctc.item(), rel=1e-12)
    assert cr.item() == pytest.approx(0.5 * hand_kl(lp.detach(), lens), rel=1e-12)
    (ctc + cr).backward()
    assert torch.isfinite(lp.grad).all()


def test_empty_transcripts_are_allowed():
    lp = log_probs(2, 3, 4)
    ctc, cr = cr_ctc_loss(lp, torch.tensor([3, 3]), [[]])
    assert ctc.item() == pytest.approx(-0.5 * lp[:, :, 0].sum().item(), rel=1e-12)  # the all-blank path
    assert torch.isfinite(cr)


def test_required_frames_count_blanks_between_repeats():
    assert ctc_required_frames([[1, 1, 2], [3, 4], [], [5, 5, 5]]).tolist() == [4, 2, 0, 5]


def test_targets_longer_than_the_encoder_output_raise_or_are_zeroed():
    lp = log_probs(4, 3, 5)
    lens = torch.tensor([3, 2, 3, 2])
    with pytest.raises(ValueError, match=r"utterances \[1\]: targets need \[3\] CTC frames"):
        cr_ctc_loss(lp, lens, [[1, 2], [2, 2]])
    with pytest.raises(ValueError, match="utterances"):
        check_ctc_lengths(torch.tensor([2]), [[4, 4]])
    ctc, _ = cr_ctc_loss(lp, lens, [[1, 2], [2, 2]], zero_infinity=True)
    want = ctc_loss(lp[[0, 2]], lens[[0, 2]], [[1, 2], [1, 2]])
    assert ctc.item() == pytest.approx(0.5 * want.item(), rel=1e-12)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\(2N, T, V\)"):
        cr_ctc_loss(log_probs(3, 4, 5), torch.tensor([4, 4, 4]), [[1]])
    with pytest.raises(ValueError, match="2 transcripts for 2 rows"):
        cr_ctc_loss(log_probs(2, 4, 5), torch.tensor([4, 4]), [[1], [2]])
    with pytest.raises(ValueError, match="lens must be"):
        consistency_loss(log_probs(2, 4, 5), torch.tensor([4]))


def test_two_view_spec_augment_doubles_the_batch_with_independent_masks():
    pytest.importorskip("lhotse")
    import random
    random.seed(0)
    torch.manual_seed(0)
    feats = torch.randn(2, 300, 80) + 5.0
    lens = torch.tensor([300, 250])
    aug = CrCtcAugment(time_mask_ratio=2.5, time_warp_factor=0, p=1.0)
    out, out_lens = aug(feats, lens)
    assert out.shape == (4, 300, 80) and out_lens.tolist() == [300, 250, 300, 250]
    # Without time warp every value is the original or a mask value (the row's mean).
    for b in range(4):
        kept = out[b] == feats[b % 2]
        assert 0.3 < kept.float().mean() < 1.0  # masked, but not entirely
        torch.testing.assert_close(out[b][~kept], torch.full_like(out[b][~kept], feats[b % 2].mean().item()))
    assert not torch.equal(out[0] == feats[0], out[2] == feats[0])  # the copies' masks differ
    with pytest.raises(ValueError, match="time_mask_ratio"):
        CrCtcAugment(time_mask_ratio=0)


# --------------------------------------------------------------------------------- loss weights
def test_cr_scale_warms_up_linearly_and_ctc_aed_scales_must_sum_to_one():
    w = LossWeights(warm_step=100, cr_loss_scale=0.2, ctc_loss_scale=0.1, attention_decoder_loss_scale=0.9)
    assert [w.scales(b)["cr"] for b in (0, 50, 100, 400)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    one = torch.tensor(1.0)
    assert w.combine(50, ctc=one * 3, cr=one * 10, attention_decoder=one * 2).item() == pytest.approx(
        0.1 * 3 + 0.1 * 10 + 0.9 * 2)
    assert w.combine(50, ctc=one * 3).item() == pytest.approx(3.0)  # CTC alone: scale 1 (icefall)
    with pytest.raises(ValueError, match="== 1"):
        LossWeights(ctc_loss_scale=0.2, attention_decoder_loss_scale=0.9).combine(1, ctc=one, attention_decoder=one)


# ------------------------------------------------------------------------- AsrModel.forward
@pytest.fixture(scope="module")
def xs_ctc_aed():
    return xs_model_with_every_head(vocab_size=32)


def test_forward_with_cr_ctc_halves_every_term_of_the_doubled_batch(xs_ctc_aed):
    m = xs_ctc_aed
    feats, lens, ys = torch.randn(2, 60, 80), torch.tensor([60, 45]), [[3, 4, 5], [6, 7]]
    with torch.no_grad(), use_backend("reference"):  # the PyTorch encoder, not the Triton interpreter
        plain = m(feats, lens, ys).terms(m)
        cr = m(feats, lens, ys, use_cr_ctc=True).terms(m, use_cr_ctc=True)  # eval: two identical copies
    assert set(plain) == {"simple", "pruned", "ctc", "attention_decoder"}
    assert set(cr) == set(plain) | {"cr"}
    for k in plain:
        assert cr[k].item() == pytest.approx(plain[k].item(), rel=1e-4), k
    assert cr["cr"].item() == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="CTC head"):
        AsrModel(ZipformerConfig.preset("XS"), vocab_size=32)(feats, lens, ys, use_cr_ctc=True)
