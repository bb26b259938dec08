"""Fused bypass and upsample+bypass (kernels/bypass.py) against the reference, in the interpreter.

out = x_orig + (y - x_orig) * c with c of shape (D,) or (B, D) (layer-drop rows zeroed), and the
out_combiner form where y is the downsampled sequence repeated ds times and cut to T. Checks the
output, both input gradients and the scale gradient (per-dtype tolerances of test_ops_helpers)
over odd T/B/D, batch 1, T not a multiple of ds, channel-truncation views as inputs, the output
dtype promotion of the reference, and that nothing but the inputs is saved for backward.
"""

import pytest
import torch

from test_ops_helpers import assert_close, grads, kernel_calls, saved_tensors
from zipformer_fast import use_backend

pytest.importorskip("triton")
from zipformer_fast.ops import bypass as BP

CASES = [(1, 1, 5), (13, 3, 37), (40, 3, 100)]  # the last: several frame and column tiles


def _make(T, B, D, dtype, per_batch, ds=0, view=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    wide = D + 3 if view else D
    x_orig = torch.randn(T, B, wide, generator=g).to(dtype)[..., :D]
    Ty = (T + ds - 1) // ds if ds else T
    y = torch.randn(Ty, B, wide, generator=g).to(dtype)[..., :D]
    c = torch.rand((B, D) if per_batch else (D,), generator=g)
    if per_batch and B > 1:
        c[0] = 0.0  # a skipped sequence (layer drop)
    if not view:
        x_orig, y = x_orig.contiguous(), y.contiguous()
    return x_orig.requires_grad_(), y.requires_grad_(), c.requires_grad_()


def _check(fused, ref, inputs, dtype, kernel_names):
    with use_backend("triton"), kernel_calls("bypass", kernel_names) as calls:
        out = fused(*inputs)
        g = torch.randn(out.shape).to(out.dtype)
        got = grads(out, inputs, g)
    assert all(v == 1 for v in calls.values()), calls
    plain = [t.detach().float().requires_grad_() for t in inputs]
    want_out = ref(*plain)
    want = grads(want_out, plain, g.float())
    assert out.dtype == ref(*[t.detach() for t in inputs]).dtype  # reference's type promotion
    assert_close(out, want_out, dtype, "output")
    for name, a, e, t in zip(("x_orig", "y", "scale"), got, want, inputs):
        assert a.dtype == t.dtype and a.shape == t.shape
        assert_close(a, e, dtype, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("per_batch", [False, True])
@pytest.mark.parametrize("shape", CASES)
def test_bypass_matches_reference(dtype, per_batch, shape):
    _check(BP.bypass, BP.bypass_reference, _make(*shape, dtype, per_batch), dtype, ("forward", "backward"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ds", [2, 4, 8])
@pytest.mark.parametrize("shape", [(1, 1, 5), (13, 3, 37)])
@pytest.mark.parametrize("per_batch", [False, True])
def test_upsample_bypass_matches_reference(dtype, ds, shape, per_batch):
    x_orig, y, c = _make(*shape, dtype, per_batch, ds=ds)
    _check(lambda a, b, s: BP.upsample_bypass(a, b, ds, s), lambda a, b, s: BP.upsample_bypass_reference(a, b, ds, s),
           (x_orig, y, c), dtype, ("upsample_forward", "upsample_backward"))


def test_truncated_views_are_accepted():
    x_orig, y, c = _make(11, 2, 30, torch.float32, False, view=True)
    assert not x_orig.is_contiguous()
    _check(BP.bypass, BP.bypass_reference, (x_orig, y, c), torch.float32, ("forward", "backward"))
    x_orig, y, c = _make(11, 2, 30, torch.float32, True, ds=4, view=True)
    _check(lambda a, b, s: BP.upsample_bypass(a, b, 4, s), lambda a, b, s: BP.upsample_bypass_reference(a, b, 4, s),
           (x_orig, y, c), torch.float32, ("upsample_forward", "upsample_backward"))


def test_fused_path_saves_only_its_inputs():
    x_orig, y, c = _make(13, 3, 37, torch.float32, True, ds=4)
    xo, yd = x_orig * 1.0, y * 1.0
    for backend in ("triton", "reference"):
        with use_backend(backend):
            _, saved = saved_tensors(lambda: BP.upsample_bypass(xo, yd, 4, c))
        new = [t for t in saved if t.data_ptr() not in (xo.data_ptr(), yd.data_ptr(), c.data_ptr())]
        if backend == "triton":
            assert new == [], [(t.shape, t.dtype) for t in new]
        else:  # the reference keeps (y_up - x_orig), a new (T, B, D) tensor
            assert any(t.shape == xo.shape for t in new)


def test_upsample_bypass_rejects_too_few_frames():
    x_orig, y, c = _make(13, 1, 5, torch.float32, False, ds=4)
    with pytest.raises(ValueError, match="cannot cover"):
        BP.upsample_bypass(x_orig, y[:2], 4, c)
