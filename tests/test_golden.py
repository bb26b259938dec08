"""The reference AsrModel reproduces icefall's golden_XS.pt (weights, activations and gradients).

Tolerance: relative error ||ours - icefall|| / ||icefall|| <= 1e-5 for every forward tensor;
every gradient within max(5e-5, 3 x its own float32-vs-float64 difference) (golden_check explains
the floor: golden's own float32 round-off reaches 4.3e-5). Measured: forward <= 6e-7, features_grad
7e-6 to 1.1e-5 (by thread count), parameter gradients mostly <= 3e-5, the sum-to-zero ones up to
2e-2, all within their tolerance.

The gradients include icefall's random Balancer/Whiten edits; golden_check replays the set that
was active (tests/data/golden_XS_fired.json). The tests pin the reference backend; helpers for fused
backends call check_against_golden under their own backend.
"""
import pytest
import torch

from golden_check import (GOLDEN_GRAD_FLOOR, check_against_golden, golden_forward_errors,
                          golden_grad_errors, rel_err)
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig

from zipformer_fast import use_backend

RTOL = 1e-5


@pytest.fixture(autouse=True)
def reference_backend():
    with use_backend("reference"):
        yield


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


def xs_with_one_weight_off(golden):
    """The golden XS model, in eval, with one stack-3 feed-forward weight scaled by 1.001."""
    model = build_xs()
    sd = {k: v.clone() for k, v in golden["state_dict"].items()}
    sd["encoder.encoders.3.encoder.layers.0.feed_forward2.in_proj.weight"] *= 1.001
    model.load_state_dict(sd, strict=True)
    return model.eval()


def test_golden_comparison_can_fail(golden):
    """The check is sensitive: a 1e-3 change to one weight is detected."""
    errs = golden_forward_errors(xs_with_one_weight_off(golden), golden)
    assert errs["stack_outputs[3]"] > RTOL and errs["encoder_out"] > RTOL
    assert errs["stack_outputs[2]"] <= RTOL


def test_forward_and_gradients_match_golden(golden):
    errs = check_against_golden(build_xs(), golden, rtol=RTOL, grads=True)
    assert sum(k.startswith("param_grads[") for k in errs) == len(golden["param_grads"]) == 285
    # features_grad is held to the same per-entry rule as the parameter gradients (inside
    # check_against_golden), not to the forward's 1e-5: our own float32-vs-float64 difference on it
    # is 6.1e-6 with one thread and 1.3e-5 with two (BLAS summation order), and golden's own
    # round-off against our float64 is 6.4e-6. Measured errors: 6.7e-6 (1 thread), 1.09e-5 (2).
    assert errs["features_grad"] <= 2e-5


def test_gradient_comparison_can_fail(golden):
    """The gradient floor (GOLDEN_GRAD_FLOOR) still catches small defects: a 1e-3 relative change to
    one feed-forward weight in stack 3 moves features_grad and stack-0 gradients beyond the floor
    (measured: 3.7e-4 on features_grad, 7.6e-4 on a stack-0 attention weight)."""
    errs = golden_grad_errors(xs_with_one_weight_off(golden), golden)
    assert errs["features_grad"] > GOLDEN_GRAD_FLOOR
    moved = [k for k, v in errs.items() if k.startswith("param_grads[encoder.encoders.0.") and v > GOLDEN_GRAD_FLOOR]
    assert moved


def test_gradients_need_the_fired_shapers(golden):
    """Without icefall's active Balancer/Whiten edits the gradients do not match: the replay matters."""
    model = build_xs()
    model.load_state_dict(golden["state_dict"], strict=True)
    model.eval()
    errs = golden_grad_errors(model, golden, fired=[])
    assert errs["features_grad"] > 1e-2


