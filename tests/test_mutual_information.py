"""Specification of the mutual-information recursion (zipformer_fast/ops/mutual_information.py):
exact equality with brute-force enumeration of all lattice paths, exact gradients (gradcheck),
occupation-probability identities, boundary handling and -inf safety. All in float64 on tiny
shapes; tolerances are 1e-12 (pure rounding) unless stated."""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from zipformer_fast.ops.mutual_information import mutual_information_recursion

NEG_INF = float("-inf")


def brute_force(px, py, modified, begin=(0, 0), end=None):
    """log-sum over all monotone paths from `begin` to `end` of one sequence (px, py 2-D)."""
    S, T = px.shape[0], py.shape[1]
    s_end, t_end = end if end is not None else (S, T)
    scores = []

    def walk(s, t, acc):
        if (s, t) == (s_end, t_end):
            scores.append(acc)
            return
        if s < s_end and (t < t_end if modified else t <= t_end):
            walk(s + 1, t + 1 if modified else t, acc + px[s, t])
        if t < t_end:
            walk(s, t + 1, acc + py[s, t])

    walk(begin[0], begin[1], torch.zeros((), dtype=torch.float64))
    if not scores:
        return torch.tensor(NEG_INF, dtype=torch.float64)
    return torch.logsumexp(torch.stack(scores), 0)


def random_lattice(B, S, T, modified, seed=0):
    g = torch.Generator().manual_seed(seed)
    px = torch.randn(B, S, T if modified else T + 1, generator=g, dtype=torch.float64)
    py = torch.randn(B, S + 1, T, generator=g, dtype=torch.float64)
    return px, py


SHAPES = [(0, 1), (0, 4), (1, 1), (2, 3), (3, 5), (4, 2), (3, 3)]


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("S,T", SHAPES)
def test_equals_brute_force(S, T, modified):
    px, py = random_lattice(2, S, T, modified, seed=S * 10 + T)
    got = mutual_information_recursion(px, py)
    want = torch.stack([brute_force(px[b], py[b], modified) for b in range(2)])
    if modified and T < S:  # no path at all
        assert torch.isneginf(got).all() and torch.isneginf(want).all()
    else:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("modified", [False, True])
def test_boundary_equals_brute_force_on_subrectangle(modified):
    S, T = 3, 5
    px, py = random_lattice(3, S, T, modified, seed=1)
    boundary = torch.tensor([[0, 0, 3, 5], [1, 1, 3, 4], [0, 2, 2, 5]])
    got = mutual_information_recursion(px, py, boundary)
    want = torch.stack([
        brute_force(px[b], py[b], modified, tuple(boundary[b, :2].tolist()),
                    tuple(boundary[b, 2:].tolist()))
        for b in range(3)
    ])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("S,T", [(0, 2), (1, 1), (2, 3)])
def test_gradcheck(S, T, modified):
    px, py = random_lattice(2, S, T, modified, seed=7)
    px.requires_grad_()
    py.requires_grad_()
    boundary = torch.tensor([[0, 0, S, T], [0, 0, S, T]])
    assert torch.autograd.gradcheck(
        lambda a, b: mutual_information_recursion(a, b, boundary), (px, py))


def test_gradcheck_with_inner_boundary():
    px, py = random_lattice(2, 3, 4, False, seed=3)
    px.requires_grad_()
    py.requires_grad_()
    boundary = torch.tensor([[0, 0, 2, 3], [1, 0, 3, 4]])
    assert torch.autograd.gradcheck(
        lambda a, b: mutual_information_recursion(a, b, boundary), (px, py))


@pytest.mark.parametrize("modified", [False, True])
def test_occupation_identities(modified):
    """Each frame is left exactly once (regular: by one blank; modified: by a blank or a symbol)
    and every symbol is emitted exactly once, so the posteriors sum to 1 (k2's invariants)."""
    S, T = 3, 6
    px, py = random_lattice(2, S, T, modified, seed=5)
    if not modified:
        px[:, :, T] = NEG_INF  # no symbol after the last frame (what fix_for_boundary does)
    boundary = torch.tensor([[0, 0, 3, 6], [0, 0, 2, 4]])
    if not modified:
        px[1, :, 4] = NEG_INF
    _, (gx, gy) = mutual_information_recursion(px, py, boundary, return_grad=True)
    for b, (s_end, t_end) in enumerate([(3, 6), (2, 4)]):
        per_frame = gy[b, :, :t_end].sum(0)
        if modified:
            per_frame = per_frame + gx[b, :, :t_end].sum(0)
        torch.testing.assert_close(per_frame, torch.ones(t_end, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(gx[b, :s_end].sum(1), torch.ones(s_end, dtype=torch.float64),
                                   rtol=0, atol=1e-12)
        # Outside the rectangle nothing is occupied.
        assert gx[b, s_end:].abs().sum() == 0 and gy[b, :, t_end:].abs().sum() == 0


def test_return_grad_matches_autograd_and_upstream_scaling():
    px, py = random_lattice(2, 2, 3, False, seed=11)
    px.requires_grad_()
    py.requires_grad_()
    total, (gx, gy) = mutual_information_recursion(px, py, return_grad=True)
    w = torch.tensor([2.0, -0.5], dtype=torch.float64)
    ax, ay = torch.autograd.grad((total * w).sum(), (px, py))
    torch.testing.assert_close(ax, gx * w.view(2, 1, 1), rtol=0, atol=1e-14)
    torch.testing.assert_close(ay, gy * w.view(2, 1, 1), rtol=0, atol=1e-14)


def test_neg_inf_everywhere_gives_zero_grad_not_nan():
    px, py = random_lattice(1, 3, 2, True, seed=2)  # modified with T < S: no path
    px.requires_grad_()
    total = mutual_information_recursion(px, py)
    assert torch.isneginf(total).all()
    (g,) = torch.autograd.grad(total.sum(), px)
    assert torch.equal(g, torch.zeros_like(g))


def test_float32_matches_float64():
    px, py = random_lattice(2, 20, 30, False, seed=4)
    got = mutual_information_recursion(px.float(), py.float())
    want = mutual_information_recursion(px, py)
    assert got.dtype == torch.float32
    # ~50 sequential log-adds of O(10) magnitudes: relative error stays at fp32 rounding level.
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_k2_switch_dispatches_to_k2_and_fails_clearly_without_it(monkeypatch):
    import types

    from zipformer_fast import configure, runtime

    px, py = random_lattice(1, 2, 3, False)
    monkeypatch.setitem(sys.modules, "k2", None)  # "import k2" raises ImportError
    with pytest.raises(ImportError, match="k2 does not import"):
        configure(k2=True)
    monkeypatch.setenv("ZIPFORMER_FAST_USE_K2", "1")
    runtime.read_environment()
    try:
        with pytest.raises(ImportError, match="ZIPFORMER_FAST_USE_K2"):
            mutual_information_recursion(px, py)
    finally:
        monkeypatch.delenv("ZIPFORMER_FAST_USE_K2")
        runtime.read_environment()
    calls = []
    fake = types.SimpleNamespace(mutual_information_recursion=lambda *a, **k: calls.append(k) or 7)
    monkeypatch.setitem(sys.modules, "k2", fake)
    with configure(k2=True):
        assert mutual_information_recursion(px, py, return_grad=True) == 7
    assert calls == [{"return_grad": True}]
    assert mutual_information_recursion(px, py).shape == (1,)  # the block ended: built-in again


def test_bad_inputs_raise_clear_errors():
    px, py = random_lattice(1, 2, 3, False)
    with pytest.raises(ValueError, match="py must have shape"):
        mutual_information_recursion(px, py[:, :2])
    with pytest.raises(ValueError, match="boundary must be int64"):
        mutual_information_recursion(px, py, torch.tensor([[0, 0, 2, 3]], dtype=torch.int32))
    with pytest.raises(ValueError, match="violates"):
        mutual_information_recursion(px, py, torch.tensor([[0, 0, 3, 3]]))


# --------------------------------------------------------------------------- Triton kernels
def _triton_vs_torch(device, B, S, T, modified, dtype, seed):
    from zipformer_fast.runtime import use_backend

    px, py = random_lattice(B, S, T, modified, seed=seed)
    px, py = px.to(device, dtype), py.to(device, dtype)
    g = torch.Generator().manual_seed(seed)
    s_end = torch.randint(0, S + 1, (B,), generator=g)
    t_end = torch.randint(1, T + 1, (B,), generator=g)
    if modified:
        s_end = torch.minimum(s_end, t_end)
    s_begin = torch.minimum(torch.randint(0, 2, (B,), generator=g), s_end)
    t_begin = torch.minimum(torch.randint(0, 2, (B,), generator=g), t_end)
    boundary = torch.stack([s_begin, t_begin, s_end, t_end], 1).to(device)
    boundary[0] = torch.tensor([0, 0, S, T])
    outs = []
    for name in ("reference", "triton"):
        with use_backend(name):
            outs.append(mutual_information_recursion(px, py, boundary, return_grad=True))
    (t_ref, (gx_ref, gy_ref)), (t_tri, (gx_tri, gy_tri)) = outs
    return t_ref, t_tri, gx_ref, gx_tri, gy_ref, gy_tri


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # numpy log(0) = -inf
@pytest.mark.parametrize("modified", [False, True])
def test_triton_kernel_in_interpreter_matches_torch(modified):
    """The Triton kernels (TRITON_INTERPRET=1, set by conftest) against the torch wavefront,
    float64 so only summation order differs. Tiny: the interpreter costs ~50 ms a diagonal."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("covered on the GPU by test_triton_kernel_on_cuda_matches_torch")
    res = _triton_vs_torch("cpu", 2, 3, 4, modified, torch.float64, seed=21)
    for ref, tri in zip(res[::2], res[1::2]):
        torch.testing.assert_close(tri, ref, rtol=0, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("modified", [False, True])
@pytest.mark.parametrize("S,T", [(0, 5), (7, 9), (80, 250), (300, 400)])
def test_triton_kernel_on_cuda_matches_torch(modified, S, T):
    if modified and T < S:
        return
    res = _triton_vs_torch("cuda", 6, S, T, modified, torch.float32, seed=S + T)
    t_ref, t_tri = res[0], res[1]
    # fp32 sums of up to S+T log-adds in different orders: relative 1e-5 of totals ~ -(S+T).
    torch.testing.assert_close(t_tri, t_ref, rtol=1e-5, atol=1e-3)
    for ref, tri in zip(res[2::2], res[3::2]):  # posteriors in [0, 1]
        torch.testing.assert_close(tri, ref, rtol=0, atol=1e-4)


AOT_SCRIPT = """
import sys
sys.path.insert(0, "tests")
from aot_compile import compile_kernel, spec
from zipformer_fast.kernels.mutual_information import aot_specs
for s in aot_specs(spec):
    for arch in (80, 90):
        c = compile_kernel(s.kernel, s.signature, s.constexprs, arch, s.num_warps, s.num_stages)
        assert len(c.asm["cubin"]) > 0
        print("ok", arch, s.name, flush=True)
"""


def test_triton_kernels_compile_for_sm80_and_sm90():
    """Full triton pipeline to cubin (catches what the interpreter accepts but GPUs reject);
    needs TRITON_INTERPRET unset, hence the subprocess."""
    pytest.importorskip("triton")
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("ok ") == 12, out[-2000:]  # 6 specs x 2 archs
