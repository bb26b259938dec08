"""The attention-decoder (AED) head (zipformer_fast/asr/attention_decoder.py) against icefall's
CTC/AED model: state-dict layout and parameter counts of S/M/L (built on the meta device), strict
loading of an icefall-layout state dict, the label-smoothed loss against a hand computation,
teacher-forcing targets, causality and padding, the SDPA path against the explicit reference
path (forward, input and parameter gradients), gradcheck in float64, and clear errors."""
import math

import pytest
import torch

from zipformer_fast import use_backend
from zipformer_fast.asr.attention_decoder import (AttentionDecoderConfig, AttentionDecoderModel,
                                                  label_smoothing_loss, sinusoidal_positions)
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig

from state_dict_layout import assert_same_layout, meta_asr_model, read_tsv as read_layout  # noqa: E402

# icefall's AsrModel(use_transducer=False, use_ctc=True, use_attention_decoder=True), vocab 500;
# the paper's Table 7 counts (46.3 / 90.0 / 174.3 M, CTC only 22.1 / 64.3 / 147.0 M).
PARAMS_CTC_AED = {"S": 46_282_107, "M": 89_987_295, "L": 174_319_650}
PARAMS_CTC = {"S": 22_118_279, "M": 64_250_603, "L": 147_010_094}
TINY = AttentionDecoderConfig(decoder_dim=16, num_layers=2, attention_dim=16, num_heads=4, feedforward_dim=24)


def read_tsv(size):
    return read_layout(size, "ctc_aed")


@pytest.fixture(scope="module", params=["S", "M", "L"])
def meta_ctc_aed(request):
    return request.param, meta_asr_model(request.param, use_transducer=False, use_ctc=True,
                                         use_attention_decoder=True)


def test_state_dict_keys_and_shapes_equal_icefall_ctc_aed_in_order(meta_ctc_aed):
    size, model = meta_ctc_aed
    assert_same_layout(model, read_tsv(size))


def test_icefall_layout_state_dict_loads_strictly(meta_ctc_aed):
    size, model = meta_ctc_aed
    state = {k: torch.empty(s, device="meta") for k, s, _ in read_tsv(size)}
    result = model.load_state_dict(state, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    bad = dict(state)
    bad.pop("attention_decoder.decoder.output_layer.bias")
    with pytest.raises(RuntimeError, match="output_layer.bias"):
        model.load_state_dict(bad, strict=True, assign=True)


def test_parameter_counts_ctc_aed_and_ctc_only(meta_ctc_aed):
    size, model = meta_ctc_aed
    total = sum(p.numel() for p in model.parameters())
    aed = sum(p.numel() for p in model.attention_decoder.parameters())
    assert total == PARAMS_CTC_AED[size] == sum(n for _, _, n in read_tsv(size))
    assert total - aed == PARAMS_CTC[size]
    ctc_only = meta_asr_model(size, use_transducer=False, use_ctc=True)
    assert sum(p.numel() for p in ctc_only.parameters()) == PARAMS_CTC[size]


def test_xs_ctc_aed_round_trip_gives_identical_outputs():
    torch.manual_seed(0)
    kw = dict(vocab_size=64, use_transducer=False, use_ctc=True, use_attention_decoder=True,
              attention_decoder_config=TINY)
    a = AsrModel(ZipformerConfig.preset("XS"), **kw).eval()
    b = AsrModel(ZipformerConfig.preset("XS"), **kw).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    enc, lens = torch.randn(2, 9, 128), torch.tensor([9, 5])
    ys = [[5, 6, 7], [8]]
    torch.testing.assert_close(a.forward_attention_decoder(enc, lens, ys),
                               b.forward_attention_decoder(enc, lens, ys), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ loss
def hand_label_smoothed_ce(logits, target, eps, ignore=-1):
    """Plain loops: -sum_c q_c log p_c with q = (1 - eps) one_hot + eps / C."""
    total = 0.0
    B, U, C = logits.shape
    for b in range(B):
        for u in range(U):
            t = int(target[b, u])
            if t == ignore:
                continue
            row = [float(v) for v in logits[b, u]]
            m = max(row)
            log_z = m + math.log(sum(math.exp(v - m) for v in row))
            for c in range(C):
                q = (1 - eps) * (c == t) + eps / C
                total -= q * (row[c] - log_z)
    return total


def test_label_smoothing_loss_matches_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    target = torch.tensor([[4, 0, 2], [3, -1, -1]])
    for eps in (0.0, 0.1, 0.5):
        got = label_smoothing_loss(logits, target, ignore_index=-1, label_smoothing=eps)
        assert got.item() == pytest.approx(hand_label_smoothed_ce(logits, target, eps), rel=1e-12)
    mean = label_smoothing_loss(logits, target, label_smoothing=0.1, reduction="mean")
    assert mean.item() == pytest.approx(hand_label_smoothed_ce(logits, target, 0.1) / 4, rel=1e-12)


def test_label_smoothing_loss_gradcheck_float64():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[1, 3, -1], [0, 2, 2]])
    assert torch.autograd.gradcheck(lambda x: label_smoothing_loss(x, target, label_smoothing=0.1), (logits,))


def tiny_decoder(dtype=torch.float32, vocab=11, memory_dim=6, config=TINY, seed=3):
    torch.manual_seed(seed)
    return AttentionDecoderModel(vocab, memory_dim=memory_dim, config=config).to(dtype).eval()


def test_teacher_forcing_targets_sos_eos_and_padding():
    m = tiny_decoder()
    ys_in, ys_in_lens, ys_out = m.prepare_targets([[3, 4], [], [5]])
    assert ys_in.tolist() == [[1, 3, 4], [1, 1, 1], [1, 5, 1]]
    assert ys_in_lens.tolist() == [3, 1, 2]
    assert ys_out.tolist() == [[3, 4, 1], [1, -1, -1], [5, 1, -1]]


def test_calc_att_loss_equals_hand_label_smoothed_ce_of_decoder_logits():
    m = tiny_decoder(torch.float64)
    enc = torch.randn(2, 7, 6, dtype=torch.float64)
    lens = torch.tensor([7, 4])
    ys = [[3, 4, 9], []]  # an empty transcript is allowed: the target is just eos
    loss = m.calc_att_loss(enc, lens, ys)
    logits = m.decoder(torch.tensor([[1, 3, 4, 9], [1, 1, 1, 1]]), torch.tensor([4, 1]), enc, lens)
    target = torch.tensor([[3, 4, 9, 1], [1, -1, -1, -1]])
    assert loss.item() == pytest.approx(hand_label_smoothed_ce(logits.detach(), target, 0.1), rel=1e-10)


def test_nll_is_teacher_forced_log_likelihood():
    m = tiny_decoder(torch.float64)
    enc, lens = torch.randn(1, 5, 6, dtype=torch.float64), torch.tensor([5])
    ys = [4, 7]
    nll = m.nll(enc, lens, [ys])
    assert nll.shape == (1, 3)
    # Score each prefix separately and add the log-probs of the next token (then eos).
    log_p = 0.0
    for i, nxt in enumerate(ys + [1]):
        prefix = torch.tensor([[1] + ys[:i]])
        logits = m.decoder(prefix, torch.tensor([i + 1]), enc, lens)[0, -1]
        log_p += torch.log_softmax(logits, -1)[nxt].item()
    assert -nll.sum().item() == pytest.approx(log_p, rel=1e-10)


def test_decoder_is_causal_and_ignores_padding():
    m = tiny_decoder(torch.float64)
    enc, lens = torch.randn(2, 6, 6, dtype=torch.float64), torch.tensor([6, 3])
    x = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 1]])
    x_lens = torch.tensor([4, 3])
    out = m.decoder(x, x_lens, enc, lens)
    x2 = x.clone()
    x2[:, 3] = 9  # a later token (and a padded position of row 1)
    enc2 = enc.clone()
    enc2[1, 3:] = 100.0  # frames past row 1's length
    out2 = m.decoder(x2, x_lens, enc2, lens)
    torch.testing.assert_close(out[:, :3], out2[:, :3], rtol=0, atol=1e-12)


def test_positional_encoding_table():
    pe = sinusoidal_positions(5, 6, dtype=torch.float64)
    for pos in range(5):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


# -------------------------------------------------------------------- fused (SDPA) vs reference
def run_both(dtype, B, T_mem, lens, ys, seed):
    m = tiny_decoder(dtype, seed=seed)
    torch.manual_seed(seed + 100)
    enc = torch.randn(B, T_mem, 6, dtype=dtype)
    results = []
    for backend in ("reference", "auto"):
        m.zero_grad(set_to_none=True)
        x = enc.clone().requires_grad_(True)
        with use_backend(backend):
            loss = m.calc_att_loss(x, torch.tensor(lens), ys)
        loss.backward()
        results.append((loss.detach(), x.grad, {n: p.grad.clone() for n, p in m.named_parameters()}))
    return results


@pytest.mark.parametrize("B, T_mem, lens, ys", [
    (3, 7, [7, 2, 5], [[2, 3, 4, 5, 6], [7], []]),   # odd shapes, padding on both sides
    (1, 1, [1], [[9, 8, 7]]),                        # batch 1, one encoder frame
])
def test_sdpa_path_matches_reference_fp32(B, T_mem, lens, ys):
    (l_ref, g_ref, p_ref), (l_fused, g_fused, p_fused) = run_both(torch.float32, B, T_mem, lens, ys, seed=4)
    torch.testing.assert_close(l_fused, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-5, atol=1e-6)
    assert p_ref.keys() == p_fused.keys()
    for name in p_ref:
        torch.testing.assert_close(p_fused[name], p_ref[name], rtol=1e-5, atol=1e-6, msg=name)


def test_sdpa_path_matches_reference_fp16():
    (l_ref, g_ref, p_ref), (l_fused, g_fused, p_fused) = run_both(
        torch.float16, 2, 5, [5, 3], [[2, 3, 4], [5]], seed=5)
    # fp16 rounding of the two orders of summation: compare at fp16 resolution.
    torch.testing.assert_close(l_fused.float(), l_ref.float(), rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(g_fused.float(), g_ref.float(), rtol=1e-2, atol=2e-3)
    for name in p_ref:
        torch.testing.assert_close(p_fused[name].float(), p_ref[name].float(), rtol=1e-2, atol=3e-3, msg=name)


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_decoder_gradcheck_float64(backend):
    cfg = AttentionDecoderConfig(decoder_dim=8, num_layers=1, attention_dim=8, num_heads=2, feedforward_dim=8)
    m = tiny_decoder(torch.float64, vocab=7, memory_dim=4, config=cfg)
    enc = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    lens = torch.tensor([3, 2])
    with use_backend(backend):
        assert torch.autograd.gradcheck(lambda e: m.calc_att_loss(e, lens, [[2, 3], [4]]), (enc,), fast_mode=True)


# ----------------------------------------------------------------------------------- bad input
def test_bad_targets_and_lengths_raise_clear_errors():
    m = tiny_decoder()
    enc, lens = torch.randn(2, 4, 6), torch.tensor([4, 3])
    with pytest.raises(ValueError, match="sos/eos"):
        m.calc_att_loss(enc, lens, [[2, 1, 3], [4]])  # id 1 is <sos/eos>
    with pytest.raises(ValueError, match="vocab_size=11"):
        m.calc_att_loss(enc, lens, [[2, 11], [4]])
    with pytest.raises(ValueError, match="at least one frame"):
        m.calc_att_loss(enc, torch.tensor([4, 0]), [[2], [4]])
    with pytest.raises(ValueError, match="3 target sequences"):
        m.calc_att_loss(enc, lens, [[2], [4], [5]])


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="sos_id=500"):
        AttentionDecoderModel(500, 8, AttentionDecoderConfig(sos_id=500))
    with pytest.raises(ValueError, match="ignore_id=3"):
        AttentionDecoderModel(500, 8, AttentionDecoderConfig(ignore_id=3))
    with pytest.raises(ValueError, match="multiple of num_heads"):
        AttentionDecoderModel(500, 8, AttentionDecoderConfig(attention_dim=30, num_heads=8))
    with pytest.raises(ValueError, match="blank"):
        AsrModel(ZipformerConfig.preset("XS"), use_ctc=True, use_transducer=False, use_attention_decoder=True,
                 attention_decoder_config=AttentionDecoderConfig(sos_id=0, eos_id=0))
    with pytest.raises(ValueError, match="use_attention_decoder=False"):
        AsrModel(ZipformerConfig.preset("XS"), attention_decoder_config=AttentionDecoderConfig())
    with pytest.raises(RuntimeError, match="use_attention_decoder=False"):
        AsrModel(ZipformerConfig.preset("XS")).forward_attention_decoder(torch.zeros(1, 2, 128), torch.tensor([2]), [[3]])
