"""Architecture facts of icefall's Zipformer that checkpoints and the paper depend on:
state-dict keys/shapes in registration order, parameter counts, output shapes, encoder FLOPs, and
clear errors for bad inputs. S/M/L are built on the meta device (no memory, no arithmetic).
"""
import pytest
import torch

from zipformer_fast import use_backend
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig

from bench.flops import count_encoder_flops
from bench.paper import ICEFALL_GFLOPS
from state_dict_layout import assert_same_layout, meta_asr_model, read_tsv  # noqa: E402

PARAMS_TRANSDUCER_CTC = {"S": 23_414_115, "M": 65_805_511, "L": 148_824_074}
PARAMS_TRANSDUCER = {"S": 23_285_615, "M": 65_549_011, "L": 148_439_574}


@pytest.fixture(autouse=True)
def reference_backend():
    with use_backend("reference"):
        yield


@pytest.fixture(scope="module", params=["S", "M", "L"])
def meta_model(request):
    return request.param, meta_asr_model(request.param, use_transducer=True, use_ctc=True)


def test_state_dict_keys_and_shapes_equal_icefall_in_order(meta_model):
    size, model = meta_model
    assert_same_layout(model, read_tsv(size))


def test_parameter_counts(meta_model):
    size, model = meta_model
    total = sum(p.numel() for p in model.parameters())
    ctc = sum(p.numel() for p in model.ctc_output.parameters())
    assert total == PARAMS_TRANSDUCER_CTC[size]
    assert total - ctc == PARAMS_TRANSDUCER[size]


def test_encoder_flops_30s_within_1_percent(meta_model):
    size, model = meta_model
    gflops = count_encoder_flops(model, seconds=30.0) / 1e9
    icefall = ICEFALL_GFLOPS[f"zipformer-{size}"]
    assert abs(gflops - icefall) <= 0.01 * icefall, gflops


@pytest.fixture(scope="module")
def m_meta():
    with torch.device("meta"):
        return AsrModel(ZipformerConfig.preset("M"), use_transducer=False, use_ctc=True).eval()


@pytest.mark.parametrize("T, T1, T2", [(100, 46, 23), (1000, 496, 248), (1003, 498, 249), (9, 1, 1), (13, 3, 2)])
def test_output_shapes_m(m_meta, T, T1, T2):
    model = m_meta
    x = torch.zeros(2, T, 80, device="meta")
    lens = torch.full((2,), T, dtype=torch.int64, device="meta")
    embed, embed_lens = model.encoder_embed(x, lens)
    assert tuple(embed.shape) == (2, T1, 192)
    out, out_lens = model.forward_encoder(x, lens)
    assert tuple(out.shape) == (2, T2, 512)


@pytest.fixture(scope="module")
def xs_model():
    torch.manual_seed(0)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True).eval()


def test_real_lengths(xs_model):
    x = torch.randn(2, 60, 80)
    with torch.no_grad():
        out, lens = xs_model.forward_encoder(x, torch.tensor([60, 31]))
    assert tuple(out.shape) == (2, 13, 128)
    assert lens.tolist() == [13, 6]  # ceil(((L - 7) // 2) / 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("features, lens, exc, msg", [
    (torch.randn(2, 60, 40), torch.tensor([60, 60]), ValueError, "80"),
    (torch.randn(60, 80), torch.tensor([60]), ValueError, "batch, frames"),
    (torch.randn(2, 8, 80), torch.tensor([8, 8]), ValueError, "at least 9"),
    (torch.randn(2, 60, 80), torch.tensor([61, 60]), ValueError, "exceed"),
    (torch.randn(2, 60, 80), torch.tensor([60, 8]), ValueError, ">= 9"),
    (torch.randn(2, 60, 80), torch.tensor([60, 60, 60]), ValueError, "3 entries"),
    (torch.randn(2, 60, 80), torch.tensor([[60, 60]]), ValueError, "1-D"),
    (torch.randn(2, 60, 80), torch.tensor([60.0, 60.0]), TypeError, "integer"),
    (torch.randint(0, 5, (2, 60, 80)), torch.tensor([60, 60]), TypeError, "floating"),
    (torch.full((2, 60, 80), float("nan")), torch.tensor([60, 60]), ValueError, "NaN"),
])
def test_bad_inputs_raise_clear_errors(xs_model, features, lens, exc, msg):
    with pytest.raises(exc, match=msg):
        xs_model.forward_encoder(features, lens)


def test_model_needs_a_head():
    with pytest.raises(ValueError, match="use_transducer"):
        AsrModel(ZipformerConfig.preset("XS"), use_transducer=False, use_ctc=False)
