"""The XS model with the fused attention (recompute mode: the handle travels through the nn
modules) reproduces icefall's golden_XS.pt forward (embedding, every stack output, encoder output,
heads) within 1e-5 relative error, like the reference path (test_golden.py). Only attention is
switched to the kernels here, so a mismatch points at them; the interpreter makes the run ~1 min.
"""
import pytest

pytest.importorskip("triton")

from golden_check import check_against_golden  # noqa: E402
from zipformer_fast.asr.model import AsrModel  # noqa: E402
from zipformer_fast.config import ZipformerConfig  # noqa: E402
from zipformer_fast.ops import attention_fused  # noqa: E402
from zipformer_fast.ops import attention as A  # noqa: E402
from zipformer_fast.runtime import configure  # noqa: E402

RTOL = 1e-5


def test_xs_forward_with_fused_attention_matches_golden(golden, monkeypatch):
    calls = []
    real = attention_fused.apply_handle
    monkeypatch.setattr(A, "use_triton_for", lambda *tensors: True)
    monkeypatch.setattr(attention_fused, "apply_handle", lambda h, v: calls.append(h) or real(h, v))
    model = AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True)
    with configure(attention_mode="recompute"):
        errs = check_against_golden(model, golden, rtol=RTOL, grads=False)
    assert errs["encoder_out"] <= RTOL
    n_layers = sum(ZipformerConfig.preset("XS").num_encoder_layers)
    assert len(calls) == 3 * n_layers  # NLA + SA1 + SA2 of every layer went through the kernels
