"""The reference AsrModel reproduces icefall's golden_XS.pt (weights, activations and gradients).

Tolerance: relative error ||ours - icefall|| / ||icefall|| <= 1e-5 for every compared tensor
(float32 on CPU; the measured errors are ~1e-6 or below, from summation order only).
"""
import pytest
import torch

from golden_check import check_against_golden, golden_forward_errors, rel_err
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig

RTOL = 1e-5


def build_xs():
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True)


def test_golden_config_is_the_xs_preset(golden):
    cfg = ZipformerConfig.preset("XS")
    for key, value in golden["config"].items():
        if key in ("seed",):
            continue
        ours = getattr(cfg, "vocab_size" if key == "vocab" else key)
        expected = tuple(value) if isinstance(value, (list, tuple)) else value
        if isinstance(ours, tuple) and not isinstance(expected, tuple):
            expected = (expected,) * len(ours)
        assert ours == expected, key


def test_golden_state_dict_loads_strictly_in_order(golden):
    model = build_xs()
    ours = model.state_dict()
    assert list(ours) == list(golden["state_dict"])
    for k, v in golden["state_dict"].items():
        assert ours[k].shape == v.shape, k
    model.load_state_dict(golden["state_dict"], strict=True)


def test_forward_outputs_match_golden(golden):
    model = build_xs()
    model.load_state_dict(golden["state_dict"], strict=True)
    model.eval()
    errs = golden_forward_errors(model, golden)
    bad = {k: v for k, v in errs.items() if not v <= RTOL}
    assert not bad, bad


def test_golden_comparison_can_fail(golden):
    """The check is sensitive: a 1e-3 change to one weight is detected."""
    model = build_xs()
    sd = {k: v.clone() for k, v in golden["state_dict"].items()}
    sd["encoder.encoders.3.encoder.layers.0.feed_forward2.in_proj.weight"] *= 1.001
    model.load_state_dict(sd, strict=True)
    model.eval()
    errs = golden_forward_errors(model, golden)
    assert errs["stack_outputs[3]"] > RTOL and errs["encoder_out"] > RTOL
    assert errs["stack_outputs[2]"] <= RTOL
