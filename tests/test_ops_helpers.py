"""Shared checks for the fused-op tests (tests/test_ops_*.py), and tests of the checks themselves.

- `assert_close(actual, expected, dtype, what)`: max|actual - expected| <= atol + rtol * max|expected|,
  with (rtol, atol) per dtype from TOL. `expected` is the reference evaluated in fp32 on the same
  (already rounded) inputs, so the tolerance measures the fused path's own rounding:
    fp32: rtol 2e-5, atol 1e-6   (reassociated fp32 sums; the interpreter's tl.dot is exact)
    fp16: rtol 4e-3, atol 1e-4   (~8 fp16 ulps of the largest value: rounding of the stored output
                                  plus of intermediates the reference rounds to fp16 and we do not)
    bf16: rtol 3e-2, atol 1e-3   (GPU only: the interpreter cannot compute in bf16)
- `kernel_calls(module, names)`: counts calls of the kernels/<module>.py launchers, so that a test
  fails if dispatch silently fell back to the reference.
- `saved_tensors(fn)`: the tensors autograd saves while running fn (one entry per storage).
"""
import contextlib
import importlib

import pytest
import torch

TOL = {torch.float32: (2e-5, 1e-6), torch.float16: (4e-3, 1e-4), torch.bfloat16: (3e-2, 1e-3)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, what: str) -> None:
    rtol, atol = TOL[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    assert torch.isfinite(a).all() == torch.isfinite(e).all(), f"{what}: non-finite values differ"
    err = (a - e).abs().max().item() if a.numel() else 0.0
    bound = atol + rtol * (e.abs().max().item() if e.numel() else 0.0)
    assert err <= bound, f"{what} ({dtype}): max error {err:.3g} > {bound:.3g} (rtol {rtol}, atol {atol})"


@contextlib.contextmanager
def kernel_calls(module: str, names=("forward", "backward")):
    """Yields a dict name -> number of calls of kernels/<module>.py's launcher `name`."""
    mod = importlib.import_module(f"zipformer_fast.kernels.{module}")
    counts = {n: 0 for n in names}
    originals = {n: getattr(mod, n) for n in names}

    def wrap(n):
        def f(*a, **k):
            counts[n] += 1
            return originals[n](*a, **k)
        return f

    for n in names:
        setattr(mod, n, wrap(n))
    try:
        yield counts
    finally:
        for n in names:
            setattr(mod, n, originals[n])


def saved_tensors(fn):
    """Run fn() and return (result, list of distinct tensors autograd saved for backward)."""
    seen, out = set(), []

    def pack(t):
        key = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if key not in seen:
            seen.add(key)
            out.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return result, out


def grads(out, inputs, grad_out):
    """Gradients of (out * grad_out).sum() w.r.t. the inputs that require grad (None elsewhere)."""
    req = [t for t in inputs if t is not None and t.requires_grad]
    got = iter(torch.autograd.grad(out, req, grad_out))
    return [next(got) if t is not None and t.requires_grad else None for t in inputs]


# ------------------------------------------------------------------ tests of the helpers
def test_assert_close_rejects_an_error_above_the_tolerance():
    e = torch.ones(10)
    assert_close(e + 1e-6, e, torch.float32, "within")
    with pytest.raises(AssertionError, match="max error"):
        assert_close(e + 1e-3, e, torch.float32, "outside")


def test_kernel_calls_counts_launches():
    pytest.importorskip("triton")
    from zipformer_fast import use_backend
    from zipformer_fast.ops.swoosh import swoosh_l

    x = torch.randn(5, requires_grad=True)
    with kernel_calls("swoosh") as calls, use_backend("triton"):
        swoosh_l(x).sum().backward()
    assert calls == {"forward": 1, "backward": 1}
