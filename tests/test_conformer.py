"""The Conformer baseline (bench/baselines/): shapes, masking, the relative shift, gradients,
and that its presets are the paper's reproduced Conformer-S/M/L (Table 2: params within 5 %,
GFLOPs per 30 s within 5 %, counted on the meta device)."""
import pytest
import torch

from bench.baselines import ConformerAsrModel, ConformerConfig, ConformerEncoder
from bench.baselines.conformer import rel_shift, subsampled_lengths
from bench.flops import count_encoder_flops, count_params
from bench.paper import PAPER


@pytest.fixture(scope="module")
def xs_model():
    torch.manual_seed(0)
    return ConformerAsrModel(ConformerConfig.preset("XS")).eval()


def test_output_shape_and_lengths(xs_model):
    feats = torch.randn(2, 100, 80)
    out, lens = xs_model.forward_encoder(feats, torch.tensor([100, 61]))
    # ((T - 1) // 2 - 1) // 2: 100 -> 24, 61 -> 14
    assert out.shape == (2, 24, 32)
    assert lens.tolist() == [24, 14]
    assert subsampled_lengths(torch.tensor([7, 8, 3000])).tolist() == [1, 1, 749]


def test_padding_does_not_change_valid_frames(xs_model):
    """A short utterance padded into a batch gives the same valid frames as run alone (eval mode)."""
    torch.manual_seed(1)
    feats = torch.randn(2, 120, 80)
    with torch.no_grad():
        batch_out, batch_lens = xs_model.forward_encoder(feats, torch.tensor([120, 70]))
        alone, alone_lens = xs_model.forward_encoder(feats[1:, :70], torch.tensor([70]))
    n = int(alone_lens[0])
    assert int(batch_lens[1]) == n
    torch.testing.assert_close(batch_out[1, :n], alone[0, :n], rtol=1e-5, atol=1e-5)


def test_rel_shift_picks_offset_j_minus_i():
    """out[..., i, j] = scores[..., i, (T-1) - i + j]: row n of the positional axis is offset (T-1) - n."""
    t = 5
    scores = torch.randn(2, 3, t, 2 * t - 1)
    out = rel_shift(scores)
    expected = torch.empty(2, 3, t, t)
    for i in range(t):
        for j in range(t):
            expected[..., i, j] = scores[..., i, t - 1 - i + j]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="2T-1"):
        rel_shift(torch.randn(1, 4, 4))


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    enc = ConformerEncoder(ConformerConfig.preset("XS", dropout=0.0)).train()
    out, _ = enc(torch.randn(2, 60, 80), torch.tensor([60, 40]))
    out.square().mean().backward()
    missing = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no (finite) gradient for {missing}"
    assert all(p.grad.abs().sum() > 0 for p in enc.parameters())


def test_bad_inputs_are_rejected(xs_model):
    with pytest.raises(ValueError, match="expected"):
        xs_model.forward_encoder(torch.randn(1, 50, 40), torch.tensor([50]))
    with pytest.raises(ValueError, match="at least 7"):
        xs_model.forward_encoder(torch.randn(1, 5, 80), torch.tensor([5]))
    with pytest.raises(ValueError, match="divisible"):
        ConformerConfig.preset("S", num_heads=5)
    with pytest.raises(ValueError, match="odd"):
        ConformerConfig.preset("S", cnn_module_kernel=32)
    with pytest.raises(ValueError, match="preset"):
        ConformerConfig.preset("XXL")


@pytest.mark.parametrize("size", ["S", "M", "L"])
def test_presets_match_table2_within_5_percent(size):
    with torch.device("meta"):
        model = ConformerAsrModel(ConformerConfig.preset(size))
    params_m = count_params(model) / 1e6
    gflops = count_encoder_flops(model, seconds=30.0) / 1e9
    paper_params, paper_gflops = PAPER[f"conformer-{size}"][:2]
    assert abs(params_m / paper_params - 1) <= 0.05, (params_m, paper_params)
    assert abs(gflops / paper_gflops - 1) <= 0.05, (gflops, paper_gflops)
