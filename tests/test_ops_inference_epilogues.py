"""The inference GEMMs that absorb the element-wise work around a Zipformer layer's projections,
against the compositions they replace, in the interpreter:

- residual_linear (kernels/residual_linear.py): residual + linear(x), residual + linear(swoosh(x))
  (convolution module) and residual + linear(x * m) (non-linear attention), one launch each;
- the convolution module's front without gradients (kernels/linear_glu.py): in_proj, the gate and
  the padding fill in one launch, then the depthwise conv.

Shapes are not multiples of the 64-wide interpreter tiles (batch 1 included), x may be a strided
(T, B, K) view (an attention output) and m a chunk of a wider projection, fp32 and fp16. With
gradients both ops are the composition (output and every gradient equal it); a whole model in
eval mode gives the same encoder output with and without autograd (the layer's inference forward
against its training-shaped forward).
"""
import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls
from zipformer_fast import configure

pytest.importorskip("triton")
from zipformer_fast.ops.gated_conv import gated_depthwise_conv1d, gated_depthwise_conv1d_reference  # noqa: E402
from zipformer_fast.ops.residual_linear import residual_linear, residual_linear_reference  # noqa: E402

SHAPES = [(1, 1, 7, 5), (9, 3, 70, 41), (13, 2, 33, 130)]  # T, B, K (in), N (out)
PRE = [(None, False), ("SwooshR", False), ("SwooshL", False), (None, True)]


def _inputs(T, B, K, N, dtype, mul, strided, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    residual = torch.randn(T, B, N, generator=g).to(dtype)
    x = torch.randn(B, T, K, generator=g).to(dtype).transpose(0, 1) if strided else \
        torch.randn(T, B, K, generator=g).to(dtype)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
    b = torch.randn(N, generator=g).to(dtype) if bias else None
    m = torch.randn(T, B, 3 * K, generator=g).to(dtype)[..., K:2 * K] if mul else None
    return residual, x, w, b, m


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act,mul", PRE)
@pytest.mark.parametrize("shape", SHAPES)
def test_residual_linear_is_one_launch_equal_to_the_composition(shape, act, mul, dtype):
    residual, x, w, b, m = _inputs(*shape, dtype, mul, strided=True)
    with torch.no_grad(), configure(backend="triton"), kernel_calls("residual_linear", ("forward",)) as calls:
        y = residual_linear(residual, x, w, b, act, m)
    assert calls == {"forward": 1}
    f = [t.float() if t is not None else None for t in (residual, x, w, b, m)]
    want = residual_linear_reference(f[0], f[1], f[2], f[3], act, f[4])
    assert y.dtype == dtype and y.shape == residual.shape
    assert_close(y, want, dtype, "output")


def test_residual_linear_without_bias_and_contiguous_input():
    residual, x, w, _, _ = _inputs(9, 3, 70, 41, torch.float32, False, strided=False, bias=False)
    with torch.no_grad(), configure(backend="triton"):
        y = residual_linear(residual, x, w, None)
    assert_close(y, residual + x @ w.t(), torch.float32, "output")


def test_residual_linear_under_autocast_rounds_the_linear_then_adds_in_the_promoted_dtype():
    """An fp32 residual stream plus an autocast bf16 projection: the sum is fp32, as in eager."""
    residual, x, w, b, _ = _inputs(9, 3, 70, 41, torch.float32, False, strided=True)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        with configure(backend="triton"):
            y = residual_linear(residual, x, w, b, "SwooshR")
        want = residual_linear_reference(residual, x, w, b, "SwooshR")
    assert y.dtype == want.dtype == torch.float32
    assert_close(y, want, torch.bfloat16, "output")


@pytest.mark.parametrize("act,mul", PRE)
def test_residual_linear_with_gradients_is_the_composition(act, mul):
    residual, x, w, b, m = _inputs(9, 3, 33, 20, torch.float32, mul, strided=True)
    inputs = [t.detach().clone().requires_grad_() if t is not None else None for t in (residual, x, w, b, m)]
    with configure(backend="triton"), kernel_calls("residual_linear", ("forward",)) as calls:
        y = residual_linear(*inputs[:4], act, inputs[4])
        g = torch.randn(y.shape)
        got = grads(y, inputs, g)
    assert calls == {"forward": 0}
    plain = [t.detach().clone().requires_grad_() if t is not None else None for t in inputs]
    want_y = residual_linear_reference(*plain[:4], act, plain[4])
    want = grads(want_y, plain, g)
    assert_close(y, want_y, torch.float32, "output")
    for name, a, e in zip(("residual", "x", "weight", "bias", "mul"), got, want):
        if e is None:
            assert a is None
        else:
            assert_close(a, e, torch.float32, f"grad {name}")


def test_residual_linear_rejects_a_dtype_mismatch_outside_autocast():
    residual, x, w, b, _ = _inputs(5, 2, 16, 8, torch.float32, False, strided=False)
    with torch.no_grad(), configure(backend="triton"), pytest.raises(TypeError, match="weight is torch.float16"):
        residual_linear(residual, x, w.half(), b)


def _conv_inputs(T, B, C, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    src = torch.randn(T, B, C, generator=g).to(dtype)
    in_w = (torch.randn(2 * C, C, generator=g) / C ** 0.5).to(dtype)
    in_b = torch.randn(2 * C, generator=g).to(dtype)
    dw_w = (torch.randn(C, 1, K, generator=g) / K ** 0.5).to(dtype)
    dw_b = torch.randn(C, generator=g).to(dtype)
    lens = torch.randint(1, T + 1, (B,), generator=g)
    lens[0] = T
    pad = torch.arange(T)[None, :] >= lens[:, None]
    return src, in_w, in_b, dw_w, dw_b, pad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("T,B,C", [(1, 1, 24), (17, 3, 40), (70, 2, 72)])
@pytest.mark.parametrize("padded", [True, False])
def test_conv_front_without_gradients_is_one_gemm_and_the_conv(T, B, C, padded, dtype):
    src, in_w, in_b, dw_w, dw_b, pad = _conv_inputs(T, B, C, 7, dtype)
    pad = pad if padded else None
    with torch.no_grad(), configure(backend="triton"), kernel_calls("linear_glu", ("forward",)) as calls:
        y = gated_depthwise_conv1d(src, in_w, in_b, pad, dw_w, dw_b)
    assert calls == {"forward": 1}
    f = [t.float() for t in (src, in_w, in_b, dw_w, dw_b)]
    want = gated_depthwise_conv1d_reference(f[0], f[1], f[2], pad, f[3], f[4])
    assert y.dtype == dtype
    assert_close(y, want, dtype, "output")
    if padded:  # padded frames of u are zero, so they add nothing to their unpadded neighbours
        src2 = src.clone()
        src2[pad.t()] = 100.0
        with torch.no_grad(), configure(backend="triton"):
            y2 = gated_depthwise_conv1d(src2, in_w, in_b, pad, dw_w, dw_b)
        keep = ~pad
        assert torch.equal(y2.permute(0, 2, 1)[keep], y.permute(0, 2, 1)[keep])


def test_eval_encoder_output_is_the_same_with_and_without_autograd():
    """The layer's inference forward (residual adds inside the projections) against the forward
    training uses (taken in eval mode when autograd records), both on the fused backend, and the
    reference backend's output."""
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig

    torch.manual_seed(0)
    cfg = ZipformerConfig.preset("XS")
    model = AsrModel(cfg, vocab_size=50, use_transducer=True, use_ctc=True).eval()
    x, lens = torch.randn(2, 97, 80), torch.tensor([97, 80])
    with configure(backend="triton"):
        with torch.no_grad():
            fast, fast_lens = model.forward_encoder(x, lens)
        general, _ = model.forward_encoder(x, lens)
    with torch.no_grad(), configure(backend="reference"):
        ref, _ = model.forward_encoder(x, lens)
    assert_close(fast, general.detach(), torch.float32, "inference vs general forward")
    assert_close(fast, ref, torch.float32, "fused vs reference")
