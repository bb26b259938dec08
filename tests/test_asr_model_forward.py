"""AsrModel.forward(x, x_lens, y, ...) as icefall's AsrModel.forward: the five loss terms in icefall's
order, each equal to its head's loss on the encoder output (the glue the recipes used to own), halved
over the two views with CR-CTC, zeros for heads the model lacks, and clear errors for bad input."""
import pytest
import torch

from zipformer_fast import ZipformerConfig, use_backend
from zipformer_fast.asr import (AsrLosses, AsrModel, consistency_loss, cr_ctc_loss, ctc_loss,
                                transducer_loss)
from zipformer_fast.compat.k2_ragged import RaggedTensor

from state_dict_layout import xs_model_with_every_head  # noqa: E402

V = 32
YS = [[3, 4, 5], [6, 7], [9, 9, 2, 11]]


@pytest.fixture(autouse=True)
def reference_backend():
    with use_backend("reference"):  # the PyTorch encoder, not the Triton interpreter
        yield


@pytest.fixture(scope="module")
def every_head():
    return xs_model_with_every_head(vocab_size=V)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 70, 80, generator=g), torch.tensor([70, 45, 61])


def head_losses(m, x, x_lens, ys, lm_scale=0.25):
    """Each head's loss on forward_encoder's output, computed one by one."""
    enc, lens = m.forward_encoder(x, x_lens)
    simple, pruned = transducer_loss(m, enc, lens, ys, lm_scale=lm_scale)
    ctc = ctc_loss(m.ctc_output(enc), lens, ys, reduction="sum")
    aed = m.attention_decoder.calc_att_loss(enc, lens, ys)
    return simple, pruned, ctc, aed


def test_forward_returns_icefalls_five_terms_in_its_order(every_head):
    x, x_lens = batch()
    with torch.no_grad():
        out = every_head(x, x_lens, YS)
    assert isinstance(out, AsrLosses)
    assert AsrLosses._fields == ("simple_loss", "pruned_loss", "ctc_loss", "attention_decoder_loss", "cr_loss")
    simple_loss, pruned_loss, ctc, aed, cr = out  # unpacks like icefall's tuple
    assert all(t.ndim == 0 for t in out)
    assert min(simple_loss.item(), pruned_loss.item(), ctc.item(), aed.item()) > 0
    assert cr.item() == 0.0


def test_terms_equal_each_heads_loss_on_the_encoder_output(every_head):
    x, x_lens = batch()
    with torch.no_grad():
        want = head_losses(every_head, x, x_lens, YS)
        got = every_head(x, x_lens, YS, prune_range=5, am_scale=0.0, lm_scale=0.25)
        ragged = every_head(x, x_lens, RaggedTensor(YS), lm_scale=0.25)  # icefall's k2.RaggedTensor form
        default_scales = every_head(x, x_lens, YS)  # icefall's forward defaults: lm_scale=0
    for name, w, g, r in zip(AsrLosses._fields, want, got, ragged):
        assert torch.equal(g, w), name
        assert torch.equal(r, w), name
    assert not torch.equal(default_scales.simple_loss, got.simple_loss)  # lm_scale reaches the loss
    assert torch.equal(default_scales.simple_loss, head_losses(every_head, x, x_lens, YS, lm_scale=0.0)[0])


def test_cr_ctc_without_augmentation_halves_the_terms_of_two_identical_copies(every_head):
    x, x_lens = batch()
    with torch.no_grad():
        plain = every_head(x, x_lens, YS)
        cr = every_head(x, x_lens, YS, use_cr_ctc=True)
    for name in ("simple_loss", "pruned_loss", "ctc_loss", "attention_decoder_loss"):
        assert getattr(cr, name).item() == pytest.approx(getattr(plain, name).item(), rel=1e-4), name
    assert cr.cr_loss.item() == pytest.approx(0.0, abs=1e-3)  # identical copies agree
    assert set(cr.terms(every_head, use_cr_ctc=True)) == {"simple", "pruned", "ctc", "cr", "attention_decoder"}
    assert set(plain.terms(every_head)) == {"simple", "pruned", "ctc", "attention_decoder"}


class MaskSecondView:
    """icefall's spec_augment form (a SpecAugment without time warp, applied to the doubled batch):
    here deterministic, zeroing frames 10..29 of the second copy only."""
    time_warp_factor = 0

    def __call__(self, x2):
        out = x2.clone()
        out[x2.shape[0] // 2:, 10:30] = 0.0
        return out


def test_cr_ctc_with_icefalls_spec_augment_form_scores_the_two_views(every_head):
    x, x_lens = batch()
    ys = YS
    with torch.no_grad():
        got = every_head(x, x_lens, ys, use_cr_ctc=True, use_spec_aug=True, spec_augment=MaskSecondView(),
                         time_warp_factor=None)
        views = MaskSecondView()(x.repeat(2, 1, 1))
        enc, lens = every_head.forward_encoder(views, x_lens.repeat(2))
        simple, pruned = transducer_loss(every_head, enc, lens, ys + ys, lm_scale=0.0)
        ctc, cr = cr_ctc_loss(every_head.ctc_output(enc), lens, ys)
        aed = every_head.attention_decoder.calc_att_loss(enc, lens, ys + ys)
    for name, want in zip(AsrLosses._fields, (0.5 * simple, 0.5 * pruned, ctc, 0.5 * aed, cr)):
        assert torch.equal(getattr(got, name), want), name
    # The views differ, so the consistency term is live (identical copies give 0 to round-off; an
    # untrained model's posteriors are near uniform, hence the small value).
    assert cr.item() > 1e-3
    assert cr.item() == pytest.approx(0.5 * consistency_loss(every_head.ctc_output(enc), lens).item(), rel=1e-6)
    with pytest.raises(ValueError, match="needs spec_augment"):
        every_head(x, x_lens, ys, use_cr_ctc=True, use_spec_aug=True)
    warping = MaskSecondView()
    warping.time_warp_factor = 80
    with pytest.raises(ValueError, match="must not time-warp itself"):
        every_head(x, x_lens, ys, use_cr_ctc=True, use_spec_aug=True, spec_augment=warping)


@pytest.mark.parametrize("heads, present", [
    (dict(use_transducer=False, use_ctc=True), {"ctc_loss"}),
    (dict(use_transducer=True, use_ctc=False), {"simple_loss", "pruned_loss"}),
])
def test_terms_of_absent_heads_are_zero(heads, present):
    torch.manual_seed(0)
    m = AsrModel(ZipformerConfig.preset("XS"), vocab_size=V, **heads).eval()
    x, x_lens = batch()
    with torch.no_grad():
        out = m(x, x_lens, YS)
    for name in AsrLosses._fields:
        value = getattr(out, name)
        assert value.shape == () and value.dtype == torch.float32, name
        assert (value.item() > 0) == (name in present), name
    assert set(out.terms(m)) == {"ctc"} if not heads["use_transducer"] else {"simple", "pruned"}


def test_gradients_reach_every_head(every_head):
    x, x_lens = batch()
    every_head.zero_grad(set_to_none=True)
    sum(every_head(x, x_lens, YS, use_cr_ctc=True)).backward()
    for head in ("decoder", "joiner", "simple_am_proj", "simple_lm_proj", "ctc_output", "attention_decoder"):
        params = list(getattr(every_head, head).parameters())
        assert params and all(p.grad is not None for p in params), head
    every_head.zero_grad(set_to_none=True)


def test_bad_input_gets_a_clear_error(every_head):
    x, x_lens = batch()
    with pytest.raises(ValueError, match="2 transcripts for a batch of 3"):
        every_head(x, x_lens, YS[:2])
    with pytest.raises(ValueError, match="2 transcripts for a batch of 3"):
        every_head(x, x_lens, RaggedTensor(YS[:2]))
    with pytest.raises(ValueError, match="exceed the padded length T=70"):
        every_head(x, torch.tensor([70, 71, 61]), YS)
    with pytest.raises(ValueError, match="feature_lens has 2 entries for a batch of 3"):
        every_head(x, x_lens[:2], YS)
    with pytest.raises(ValueError, match=r"utterances \[1\] hold token ids outside \[0, vocab_size=32\)"):
        every_head(x, x_lens, [[3], [32], [4]])
    with pytest.raises(TypeError, match="token-id lists or a k2.RaggedTensor"):
        every_head(x, x_lens, torch.tensor([[3, 4], [5, 6], [7, 8]]))
    with pytest.raises(TypeError, match="token-id lists or a k2.RaggedTensor"):
        every_head(x, x_lens, 3)
