"""Specification of the model-level loss helpers: transducer_loss (icefall's forward_transducer)
on the XS AsrModel's heads, the CTC loss wrapper, target padding and icefall's loss weights.
The encoder is not run: encoder_out is random (B, T, E), which is all these heads see."""
import pytest
import torch
import torch.nn.functional as F

from zipformer_fast import ZipformerConfig
from zipformer_fast.asr.ctc import ctc_loss
from zipformer_fast.asr.loss_weights import LossWeights, transducer_loss_scales
from zipformer_fast.asr.rnnt_loss import rnnt_loss
from zipformer_fast.asr.search import greedy_search_batch, modified_beam_search
from zipformer_fast.asr.targets import pad_targets
from zipformer_fast.asr.transducer_loss import transducer_loss

V = 16
TARGETS = [[3, 5, 7, 2], [4], [9, 9, 1]]
LENS = torch.tensor([8, 5, 6])


@pytest.fixture(scope="module")
def model():
    from zipformer_fast.asr.model import AsrModel
    torch.manual_seed(0)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=V, use_transducer=True,
                    use_ctc=True).eval()


@pytest.fixture(scope="module")
def encoder_out(model):
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 8, model.config.output_dim, generator=g)


def full_transducer_nll(model, enc, targets, lens):
    """Unpruned loss with the real joiner on every (t, s) pair, per utterance."""
    out = []
    for b, y in enumerate(targets):
        T = int(lens[b])
        dec = model.decoder(torch.tensor([[0] + y]))  # [blank] + y
        logits = model.joiner(enc[b:b + 1, :T, None, :], dec[:, None, :, :])
        out.append(rnnt_loss(logits, torch.tensor([y]), 0, reduction="none")[0])
    return torch.stack(out)


def test_pruned_equals_full_loss_when_range_covers_all_labels(model, encoder_out):
    with torch.no_grad():
        _, pruned = transducer_loss(model, encoder_out, LENS, TARGETS, prune_range=5,
                                    reduction="none")
        want = full_transducer_nll(model, encoder_out, TARGETS, LENS)
    torch.testing.assert_close(pruned, want, rtol=1e-5, atol=1e-4)  # fp32 sums over ~12 arcs


def test_pruned_loss_upper_bounds_full_loss_with_narrow_range(model, encoder_out):
    with torch.no_grad():
        _, pruned = transducer_loss(model, encoder_out, LENS, TARGETS, prune_range=2,
                                    reduction="none")
        full = full_transducer_nll(model, encoder_out, TARGETS, LENS)
    assert torch.isfinite(pruned).all() and (pruned >= full - 1e-4).all()


def test_simple_loss_is_the_additive_joiner_loss(model, encoder_out):
    with torch.no_grad():
        simple, _ = transducer_loss(model, encoder_out, LENS, TARGETS, lm_scale=0.0,
                                    reduction="none")
        want = []
        for b, y in enumerate(TARGETS):
            T = int(LENS[b])
            lm = model.simple_lm_proj(model.decoder(torch.tensor([[0] + y])))
            am = model.simple_am_proj(encoder_out[b:b + 1, :T])
            want.append(rnnt_loss(am[:, :, None] + lm[:, None], torch.tensor([y]), 0,
                                  reduction="none")[0])
    torch.testing.assert_close(simple, torch.stack(want), rtol=1e-5, atol=1e-4)


def test_padded_targets_equal_list_targets_and_gradients_flow(model, encoder_out):
    padded, lens = pad_targets(TARGETS)
    padded[1, 1:] = 11  # junk after the length must be ignored
    enc = encoder_out.clone().requires_grad_()
    simple, pruned = transducer_loss(model, enc, LENS, padded, target_lens=lens)
    ref_s, ref_p = transducer_loss(model, encoder_out, LENS, TARGETS)
    torch.testing.assert_close(simple, ref_s)
    torch.testing.assert_close(pruned, ref_p)
    model.zero_grad()
    (0.5 * simple + pruned).backward()
    assert torch.isfinite(enc.grad).all() and enc.grad[0].abs().sum() > 0
    assert enc.grad[1, 5:].abs().sum() == 0  # frames past the length get no gradient
    for name in ("simple_am_proj", "simple_lm_proj", "joiner", "decoder"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name


def test_xs_model_decodes(model, encoder_out):
    with torch.no_grad():
        greedy = greedy_search_batch(model, encoder_out, LENS)
        beam = modified_beam_search(model, encoder_out, LENS, beam=4)
    for hyps in (greedy, beam):
        assert len(hyps) == 3
        for h, n in zip(hyps, LENS.tolist()):
            assert len(h) <= n and all(0 < tok < V for tok in h)


def test_ctc_loss_matches_torch_on_list_and_padded_targets(model, encoder_out):
    log_probs = model.ctc_output(encoder_out)
    got = ctc_loss(log_probs, LENS, TARGETS)
    flat = torch.tensor([t for y in TARGETS for t in y])
    want = F.ctc_loss(log_probs.permute(1, 0, 2), flat, LENS, torch.tensor([4, 1, 3]),
                      reduction="sum")
    torch.testing.assert_close(got, want)
    padded, lens = pad_targets(TARGETS)
    torch.testing.assert_close(ctc_loss(log_probs, LENS, padded, lens), want)


def test_ctc_zero_infinity():
    log_probs = torch.randn(1, 2, 5).log_softmax(-1)
    assert torch.isinf(ctc_loss(log_probs, torch.tensor([2]), [[1, 1]]))  # needs 3 frames
    assert ctc_loss(log_probs, torch.tensor([2]), [[1, 1]], zero_infinity=True) == 0


def test_icefall_warmup_scales():
    assert transducer_loss_scales(0) == (1.0, 0.1)
    assert transducer_loss_scales(1000) == pytest.approx((0.75, 0.55))
    assert transducer_loss_scales(2000) == (0.5, 1.0)
    assert transducer_loss_scales(10 ** 6) == (0.5, 1.0)
    w = LossWeights()
    s, p, c = torch.tensor(2.0), torch.tensor(3.0), torch.tensor(5.0)
    assert w.combine(1000, simple=s, pruned=p, ctc=c).item() == pytest.approx(
        0.75 * 2 + 0.55 * 3 + 0.2 * 5)
    assert w.combine(10, ctc=c).item() == pytest.approx(5.0)  # CTC only: scale forced to 1
    assert w.scales(500)["cr"] == pytest.approx(0.25 * 0.2)
    with pytest.raises(ValueError, match="come together"):
        w.combine(1, simple=s)


def test_pad_targets_errors():
    with pytest.raises(ValueError, match="need target_lens"):
        pad_targets(torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="do not fit"):
        pad_targets(torch.zeros(2, 3, dtype=torch.int64), torch.tensor([4, 1]))


@pytest.mark.gpu
def test_cuda_losses_and_decoding_match_cpu(model, encoder_out):
    """Device handling end to end (targets built on the right device, CPU CTC targets with CUDA
    log-probs, Triton recursion) and bf16 autocast: the losses still run in fp32."""
    import copy

    cuda_model = copy.deepcopy(model).cuda()
    enc = encoder_out.cuda()
    lens = LENS.cuda()
    with torch.no_grad():
        ref = transducer_loss(model, encoder_out, LENS, TARGETS, prune_range=2)
        got = transducer_loss(cuda_model, enc, lens, TARGETS, prune_range=2)
        for r, g in zip(ref, got):
            assert g.dtype == torch.float32
            torch.testing.assert_close(g.cpu(), r, rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(
            ctc_loss(cuda_model.ctc_output(enc), lens, TARGETS).cpu(),
            ctc_loss(model.ctc_output(encoder_out), LENS, TARGETS), rtol=1e-4, atol=1e-3)
        assert greedy_search_batch(cuda_model, enc, lens) == greedy_search_batch(model, encoder_out, LENS)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        simple, pruned = transducer_loss(cuda_model, enc.requires_grad_(), lens, TARGETS)
    assert simple.dtype == pruned.dtype == torch.float32
    (simple + pruned).backward()
    assert torch.isfinite(enc.grad).all()
