"""Training-mode behaviour of the reference Zipformer: it runs forward/backward, its schedules follow
the batch count, and its stochastic tricks (feature masking, layer drop, gradient shapers) act at
icefall's documented rates. Statistical tests use fixed seeds and a 5-sigma binomial bound
|observed - p| <= 5 * sqrt(p (1 - p) / n), so a correct implementation fails with probability < 1e-6
and a rate off by more than ~2 percentage points fails.
"""
import math
import random

import pytest
import torch

from zipformer_fast import use_backend
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig
from zipformer_fast.nn import Balancer, BypassModule, ScheduledFloat, Whiten, set_batch_count


@pytest.fixture(autouse=True)
def reference_backend():
    with use_backend("reference"):
        yield


def binomial_ok(k, n, p, sigmas=5.0):
    return abs(k / n - p) <= sigmas * math.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def xs():
    torch.manual_seed(0)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True)


def test_train_forward_backward_runs_and_trains_every_used_parameter(xs):
    torch.manual_seed(1)
    random.seed(1)
    xs.train()
    set_batch_count(xs, 500.0)
    x = torch.randn(3, 120, 80)
    out, lens = xs.forward_encoder(x, torch.tensor([120, 100, 80]))
    assert out.shape == (3, 28, 128) and lens.tolist() == [28, 23, 18]
    (out.square().mean() + xs.ctc_log_probs(out).mean()).backward()
    missing = [n for n, p in xs.encoder.named_parameters() if p.grad is None and not n.endswith("layers.0.bypass_scale")]
    assert torch.isfinite(out).all()
    # Layer-drop / skips may zero a whole module for this batch, so require most, not all, grads.
    n = sum(1 for _ in xs.encoder.parameters())
    assert len(missing) < 0.2 * n, missing
    # bypass_scale on the layer itself is unused in forward (icefall's "TODO: remove it").
    assert all(p.grad is None for nm, p in xs.named_parameters() if nm.endswith("layers.0.bypass_scale"))
    xs.zero_grad(set_to_none=True)


def test_scheduled_float_follows_batch_count_and_eval_default():
    sf = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
    assert float(sf) == 0.4  # no batch count yet
    for bc, expected in [(0, 0.5), (4000, 0.3125), (8000, 0.125), (1e6, 0.125)]:
        sf.batch_count = bc
        assert float(sf) == pytest.approx(expected)
    sf.eval()
    assert float(sf) == 0.4


def test_set_batch_count_moves_model_schedules(xs):
    xs.train()
    layer = xs.encoder.encoders[0].layers[0]
    balancer = layer.feed_forward1.hidden_balancer
    set_batch_count(xs, 0.0)
    assert float(balancer.prob) == pytest.approx(0.5)
    assert float(layer.bypass.scale_min) == pytest.approx(0.9)
    assert float(layer.attention_skip_rate) == pytest.approx(0.2)
    set_batch_count(xs, 20000.0)
    assert float(balancer.prob) == pytest.approx(0.125)
    assert float(layer.bypass.scale_min) == pytest.approx(0.2)
    assert float(layer.attention_skip_rate) == pytest.approx(0.0)
    # Stack 0 of 6: its layer-drop warm-up window is 4000*1/7 .. 4000*2/7 (one layer), final 0.035.
    set_batch_count(xs, 0.0)
    assert float(layer.bypass.skip_rate) == pytest.approx(0.5)
    set_batch_count(xs, 1e5)
    assert float(layer.bypass.skip_rate) == pytest.approx(0.035)
    xs.eval()
    assert float(balancer.prob) == pytest.approx(0.4) and float(layer.bypass.skip_rate) == 0.0


def test_feature_mask_rates(xs):
    xs.train()
    torch.manual_seed(2)
    n = 20000
    masks = xs.encoder.get_feature_masks(torch.zeros(1, n, 64))
    d, u = 80, 48  # stack 1 of XS: D = 80, unmasked 48 -> u2 = 64
    m = masks[1][0]
    assert torch.all(m[:, :u] == 1)
    mask1_off = int((m[:, u] == 0).sum())
    mask2_off = int((m[:, 64] == 0).sum())
    assert binomial_ok(mask1_off, n, 0.125), mask1_off / n
    assert binomial_ok(mask2_off, n, 1 - 0.875 ** 2), mask2_off / n
    # mask2 is a refinement of mask1: whatever mask1 drops, mask2 drops too.
    assert torch.all(m[:, 64][m[:, u] == 0] == 0)
    xs.eval()
    assert xs.encoder.get_feature_masks(torch.zeros(1, 4, 64)) == [1.0] * 6


@pytest.mark.parametrize("batch_count, rate", [(0.0, 0.5), (100000.0, 0.035)])
def test_layer_skipping_rate(xs, batch_count, rate):
    layer = xs.encoder.encoders[0].layers[0]
    xs.train()
    set_batch_count(xs, batch_count)
    torch.manual_seed(3)
    n = 20000
    scale = layer.bypass.get_scale(n)
    skipped = int((scale.abs().sum(dim=1) == 0).sum())
    assert binomial_ok(skipped, n, rate), skipped / n
    xs.eval()
    assert layer.bypass.get_scale(n) is layer.bypass.bypass_scale  # eval: the raw (D,) parameter


def test_balancer_changes_gradient_not_value():
    torch.manual_seed(4)
    x = (torch.randn(500, 8) * 10 + 5).requires_grad_(True)  # violates max_abs and max_positive
    bal = Balancer(8, channel_dim=-1, min_positive=0.05, max_positive=0.95, min_abs=0.2, max_abs=1.0)
    bal.forced = True
    y = bal(x)
    assert torch.equal(y, x)
    g = torch.randn(500, 8)
    y.backward(g)
    assert not torch.allclose(x.grad, g)
    # The edit pushes towards the limits: here it shrinks |x|, so the added gradient is positive
    # where x > 0 (gradient descent lowers x).
    assert ((x.grad - g) * x.detach().sign()).mean() > 0
    x2 = x.detach().clone().requires_grad_(True)
    bal.forced = False
    bal(x2).backward(g)
    assert torch.equal(x2.grad, g)


def test_whiten_changes_gradient_not_value():
    torch.manual_seed(5)
    base = torch.randn(400, 1)
    x = (base @ torch.ones(1, 16) + 0.01 * torch.randn(400, 16)).requires_grad_(True)  # rank ~1: not white
    w = Whiten(num_groups=1, whitening_limit=2.0, prob=(0.025, 0.25), grad_scale=0.1)
    w.forced = True
    y = w(x)
    assert torch.equal(y, x)
    g = torch.randn(400, 16)
    y.backward(g)
    extra = x.grad - g
    assert extra.norm().item() == pytest.approx(0.1 * g.norm().item(), rel=1e-4)  # rescaled to grad_scale * |grad|
    assert w.prob == w.max_prob
    x2 = torch.randn(400, 16).requires_grad_(True)  # white data: metric ~1 < limit, no edit
    w(x2).backward(g)
    assert torch.equal(x2.grad, g) and w.prob == w.min_prob


def test_bypass_limits_only_gradients():
    byp = BypassModule(4, scale_min=0.9)
    byp.train()
    with torch.no_grad():
        byp.bypass_scale.fill_(0.5)  # below scale_min
    random.seed(0)
    flipped = 0
    for _ in range(200):
        byp.zero_grad()
        out = byp(torch.zeros(1, 1, 4), torch.ones(1, 1, 4))
        assert torch.allclose(out, torch.full((1, 1, 4), 0.5))  # forward is the raw scale
        out.sum().backward()  # gradient +1: descent would push the scale further below scale_min
        flipped += int(byp.bypass_scale.grad[0] < 0)
    # limit_param_value acts with probability 0.6 and then flips the gradient sign.
    assert binomial_ok(flipped, 200, 0.6), flipped


def test_causal_model_does_not_look_past_its_chunk():
    cfg = ZipformerConfig.preset("XS", causal=True, chunk_size=(16,), left_context_frames=(64,))
    torch.manual_seed(6)
    enc = AsrModel(cfg, vocab_size=64).encoder.eval()
    assert type(enc.encoders[0].layers[0].conv_module1.depthwise_conv).__name__ == "ChunkCausalDepthwiseConv1d"
    x = torch.randn(64, 2, 64)
    lens = torch.tensor([64, 64])
    with torch.no_grad():
        y1, _ = enc(x, lens)
        x2 = x.clone()
        x2[16:] += torch.randn(48, 2, 64)  # change everything after the first chunk
        y2, _ = enc(x2, lens)
    assert torch.allclose(y1[:8], y2[:8], atol=1e-6)  # 25 Hz frames 0..7 = 50 Hz chunk 0
    assert not torch.allclose(y1[8:], y2[8:], atol=1e-3)


def test_causal_full_context_equals_one_chunk():
    cfg = ZipformerConfig.preset("XS", causal=True, chunk_size=(-1,), left_context_frames=(-1,))
    torch.manual_seed(7)
    enc = AsrModel(cfg, vocab_size=64).encoder.eval()
    x = torch.randn(40, 1, 64)
    with torch.no_grad():
        assert enc.get_attn_mask(x, -1, -1) is None
        y, _ = enc(x, torch.tensor([40]))
    assert torch.isfinite(y).all()
