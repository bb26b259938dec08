"""The fused attention path (kernels/attention_*.py behind zipformer_fast.ops.attention) equals the
reference ops, in both modes, forward and every gradient, as the Zipformer layer uses them:
shared weights W from (q, k, p, pos_proj, masks), then three uses - non-linear attention on head 0
(value width > one value tile), self-attention 1 and 2 - whose gradients into q/k/p/pos must sum.

Runs the Triton kernels in the interpreter (conftest sets TRITON_INTERPRET=1); interpreter tiles are
32 x 32 so T = 33 and 50 cross a tile edge with a ragged last tile and T = 7 is one partial tile.

Tolerances: fp32 results within 1e-4 (absolute, on values of order 1-10; observed ~3e-5: the
kernels sum in a different order). fp16: the fused result is compared with the fp32 reference on
the same fp16-rounded inputs and must be within 4x the error the reference itself makes in fp16
(plus a small floor), i.e. no worse than fp16 arithmetic.
"""
import pytest
import torch

pytest.importorskip("triton")

from zipformer_fast.runtime import configure, use_backend  # noqa: E402
from zipformer_fast.ops import attention as A  # noqa: E402

FP32_ATOL = 1e-4
# On a GPU machine the same tests run the compiled kernels on CUDA (no interpreter there).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def interpreter_tiles(monkeypatch):
    import zipformer_fast.kernels.attention_fwd as fwd

    monkeypatch.setattr(fwd, "INTERPRETER_BLOCK", 32)


def chunk_causal_mask(T, chunk, left_chunks):
    """icefall's (T, T) mask, True = masked: key chunk after the query's, or too far left."""
    c = torch.arange(T) // chunk
    mask = c[None, :] > c[:, None]
    if left_chunks >= 0:
        mask |= c[None, :] < c[:, None] - left_chunks
    return mask


def make_inputs(T, B, H, *, dq=32, dp=4, dv=12, hw=80, dtype=torch.float32, pos=True, seed=0,
                scale=1.0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=1.0):
        return (torch.randn(*shape, generator=g) * s).to(device=DEVICE, dtype=dtype).requires_grad_()

    return dict(
        q=r(T, B, H, dq, s=scale), k=r(T, B, H, dq, s=scale), p=r(T, B, H, dp),
        pos=r(2 * T - 1, H, dp) if pos else None,
        v1=r(H, B, T, dv), v2=r(H, B, T, dv), x=r(1, B, T, hw),
    )


def layer_uses(weights, t):
    """The three consumers of one Zipformer layer's weights (NLA head 0, SA1, SA2)."""
    nla = A.attention_apply(A.attention_head0(weights), t["x"])
    sa1 = A.attention_apply(weights, t["v1"])
    sa2 = A.attention_apply(weights, t["v2"])
    return nla, sa1, sa2


def run(t, kpm, am, *, fused, mode="recompute", penalize=False, grads=True):
    """Outputs and gradients (w.r.t. every input) of the three uses under a fixed random loss."""
    names = [n for n in ("q", "k", "p", "pos", "v1", "v2", "x") if t[n] is not None]
    if t["pos"] is None:
        names.remove("p")  # p only meets the positional term
    if fused:
        with use_backend("triton"), configure(attention_mode=mode):
            w = A.attention_weights(t["q"], t["k"], t["p"], t["pos"], kpm, am, penalize)
            assert isinstance(w, A.Tensor) == (mode == "materialize")
            outs = layer_uses(w, t)
    else:
        w = A.attention_weights_reference(t["q"], t["k"], t["p"], t["pos"], kpm, am, penalize)
        outs = layer_uses(w, t)
    if not grads:
        return outs, None
    g = torch.Generator().manual_seed(123)
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(DEVICE)).sum() for o in outs)
    return outs, dict(zip(names, torch.autograd.grad(loss, [t[n] for n in names])))


def assert_close_fp32(fused, ref, what):
    err = (fused.float() - ref.float()).abs().max().item()
    assert err <= FP32_ATOL, f"{what}: max abs error {err:.3g} > {FP32_ATOL}"


CASES = {
    # name: (T, B, H, key padding lengths or None, chunk mask (chunk, left_chunks) or None)
    "T7_b1_nomask": (7, 1, 2, None, None),
    "T33_pad_chunk": (33, 2, 2, (33, 21), (8, 0)),   # batch 1 rows 24.. see only padding: fully masked
    "T50_pad_leftctx": (50, 2, 2, (44, 50), (16, 1)),
}


def masks_for(T, B, lengths, chunk):
    kpm = None
    if lengths is not None:
        kpm = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]).to(DEVICE)
    am = chunk_causal_mask(T, *chunk).to(DEVICE) if chunk is not None else None
    return kpm, am


@pytest.mark.parametrize("mode", ["recompute", "materialize"])
@pytest.mark.parametrize("case", ["T7_b1_nomask", "T33_pad_chunk"])
def test_three_uses_fp32_match_reference(case, mode):
    T, B, H, lengths, chunk = CASES[case]
    kpm, am = masks_for(T, B, lengths, chunk)
    t = make_inputs(T, B, H)
    outs, grads = run(t, kpm, am, fused=True, mode=mode)
    routs, rgrads = run(t, kpm, am, fused=False)
    for name, o, ro in zip(("nla", "sa1", "sa2"), outs, routs):
        assert o.shape == ro.shape and o.dtype == ro.dtype
        assert_close_fp32(o, ro, f"{name} output")
    for name in rgrads:
        assert_close_fp32(grads[name], rgrads[name], f"d{name}")


def test_two_walk_backward_of_wide_values_matches_reference(monkeypatch):
    """The backward older GPUs run for non-linear attention wider than 256 (dS, then dv, in two
    walks over the keys) gives the one walk's gradients."""
    from zipformer_fast.kernels import attention_bwd

    monkeypatch.setattr(attention_bwd, "one_walk", lambda bdv, device: bdv <= 64)
    T, B, H, lengths, chunk = CASES["T33_pad_chunk"]
    kpm, am = masks_for(T, B, lengths, chunk)
    t = make_inputs(T, B, H)
    _, grads = run(t, kpm, am, fused=True)
    _, rgrads = run(t, kpm, am, fused=False)
    for name in rgrads:
        assert_close_fp32(grads[name], rgrads[name], f"d{name}")


def test_left_context_mask_and_no_positional_term():
    """Chunk mask with one left chunk; pos_proj None (icefall's training-time positional skip)."""
    T, B, H, lengths, chunk = CASES["T50_pad_leftctx"]
    kpm, am = masks_for(T, B, lengths, chunk)
    t = make_inputs(T, B, H, pos=False, hw=16)
    outs, grads = run(t, kpm, am, fused=True, mode="recompute")
    routs, rgrads = run(t, kpm, am, fused=False)
    for o, ro in zip(outs, routs):
        assert_close_fp32(o, ro, "output")
    assert set(grads) == set(rgrads) == {"q", "k", "v1", "v2", "x"}
    for name in rgrads:
        assert_close_fp32(grads[name], rgrads[name], f"d{name}")


def fp16_error_bound(ref16, ref32):
    return 4.0 * (ref16.float() - ref32.float()).abs().max().item() + 1e-3


HALF = [torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])  # interpreter: no bf16


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("mode", ["recompute", "materialize"])
def test_three_uses_half(mode, dtype):
    T, B, H = 33, 1, 2
    kpm, am = masks_for(T, B, None, (8, 1))
    t16 = make_inputs(T, B, H, dtype=dtype, seed=1)
    t32 = {n: (x.detach().float().requires_grad_() if x is not None else None) for n, x in t16.items()}
    outs, grads = run(t16, kpm, am, fused=True, mode=mode)
    r16, rg16 = run(t16, kpm, am, fused=False)
    r32, rg32 = run(t32, kpm, am, fused=False)
    for name, o, a, b in zip(("nla", "sa1", "sa2"), outs, r16, r32):
        assert o.dtype == dtype
        err = (o.float() - b).abs().max().item()
        assert err <= fp16_error_bound(a, b), f"{name}: {err:.3g} vs fp16 reference {fp16_error_bound(a, b):.3g}"
    for name in rg32:
        err = (grads[name].float() - rg32[name]).abs().max().item()
        bound = fp16_error_bound(rg16[name], rg32[name])
        assert grads[name].dtype == dtype
        assert err <= bound, f"d{name}: {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("mode", ["recompute", "materialize"])
def test_score_penalty_added_once(mode):
    """icefall's penalize_abs_values_gt(S, 25, 1e-4): identity forward; in backward +1e-4*sign(S)
    where |S| > 25 (masked positions included), once, although three uses consume the weights."""
    T, B, H = 7, 1, 2
    kpm, am = masks_for(T, B, None, (2, 0))
    t = make_inputs(T, B, H, scale=2.0, seed=3)  # |q.k| ~ 4*sqrt(32) ~ 23: many scores beyond 25
    with torch.no_grad():
        s = A.attention_scores_reference(t["q"], t["k"], t["p"], t["pos"], None, None)
    assert (s.abs() > 25).float().mean() > 0.1
    _, grads = run(t, kpm, am, fused=True, mode=mode, penalize=True)
    _, rgrads = run(t, kpm, am, fused=False, penalize=True)
    _, rgrads_plain = run(t, kpm, am, fused=False, penalize=False)
    assert (rgrads["q"] - rgrads_plain["q"]).abs().max() > 1e-4  # the penalty is visible
    for name in rgrads:
        assert_close_fp32(grads[name], rgrads[name], f"d{name}")


@pytest.mark.parametrize("mode", ["recompute", "materialize"])
def test_constant_attention(mode):
    """Uniform weights over the keys whose weight is > 0 (= unmasked keys; all keys of a fully
    masked row); gradient only into the values."""
    T, B, H = 33, 2, 2
    kpm, am = masks_for(T, B, (33, 21), (8, 0))
    t = make_inputs(T, B, H, hw=24)
    with use_backend("triton"), configure(attention_mode=mode):
        w = A.attention_weights(t["q"], t["k"], t["p"], t["pos"], kpm, am)
        out = A.attention_apply(A.constant_attention(A.attention_head0(w)), t["x"])
    wr = A.attention_weights_reference(t["q"], t["k"], t["p"], t["pos"], kpm, am)
    ref = A.attention_apply(A.constant_attention(A.attention_head0(wr)), t["x"])
    assert_close_fp32(out, ref, "const output")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    dx, dq = torch.autograd.grad((out * g).sum(), [t["x"], t["q"]], allow_unused=True)
    rdx, = torch.autograd.grad((ref * g).sum(), [t["x"]])
    assert_close_fp32(dx, rdx, "const dx")
    assert dq is None or dq.abs().max() == 0


def test_autocast_fp16():
    """Under autocast the weights and uses run in the autocast dtype, as the reference matmuls do."""
    T, B, H = 7, 1, 2
    t = make_inputs(T, B, H, hw=16, seed=4)
    with torch.autocast(DEVICE, dtype=torch.float16):
        outs, grads = run(t, None, None, fused=True, mode="recompute")
        routs, _ = run(t, None, None, fused=False)
    for o, ro in zip(outs, routs):
        assert o.dtype == ro.dtype == torch.float16
        assert (o.float() - ro.float()).abs().max() < 1e-2
    assert all(grads[n].dtype == torch.float32 for n in grads)  # leaves are fp32


def saved_bytes(fn):
    """Bytes saved for backward (each storage counted once) while running fn()."""
    storages = {}

    def pack(x):
        st = x.untyped_storage()
        storages[st.data_ptr()] = st.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return sum(storages.values())


def test_recompute_mode_saves_linear_memory(monkeypatch):
    """Saved-for-backward bytes of weights + three uses: doubling T doubles them (recompute
    mode), where the reference, which keeps (H,B,T,T) tensors, grows towards 4x."""
    import zipformer_fast.kernels.attention_fwd as fwd

    monkeypatch.setattr(fwd, "INTERPRETER_BLOCK", 64)  # forward only; few interpreted programs

    def layer(T, fused):
        t = make_inputs(T, 1, 1, hw=16)
        return saved_bytes(lambda: run(t, None, None, fused=fused, mode="recompute", grads=False))

    fused = [layer(T, True) for T in (64, 128)]
    ref = [layer(T, False) for T in (64, 128)]
    assert fused[1] / fused[0] < 2.05, fused
    assert ref[1] / ref[0] > 2.5, ref  # its T x T part already dominates at these sizes
    assert fused[1] < ref[1], (fused, ref)


def test_mode_selection():
    """auto materialises the weights up to MATERIALIZE_MAX_T frames and recomputes beyond; an
    explicit mode holds at every length."""
    with configure(attention_mode="auto"):
        assert A.attention_mode_for(A.MATERIALIZE_MAX_T) == "materialize"
        assert A.attention_mode_for(A.MATERIALIZE_MAX_T + 1) == "recompute"
    with configure(attention_mode="recompute"):
        assert A.attention_mode_for(8) == "recompute"
    with configure(attention_mode="materialize"):
        assert A.attention_mode_for(10_000) == "materialize"


def test_wrong_value_shape_is_a_clear_error():
    t = make_inputs(7, 1, 2)
    with use_backend("triton"), configure(attention_mode="recompute"):
        w = A.attention_weights(t["q"], t["k"], t["p"], t["pos"], None, None)
        with pytest.raises(ValueError, match="expected \\(2, 1, 7, dv\\)"):
            A.attention_apply(w, t["x"])  # one head given to the all-heads weights


@pytest.mark.gpu  # several 64-wide GPU tiles: too slow for the interpreter
@pytest.mark.parametrize("mode", ["recompute", "materialize"])
def test_long_sequence_on_gpu(mode):
    T, B, H = 300, 3, 4
    kpm, am = masks_for(T, B, (300, 250, 137), (32, 2))
    t = make_inputs(T, B, H, hw=144)
    outs, grads = run(t, kpm, am, fused=True, mode=mode, penalize=True)
    routs, rgrads = run(t, kpm, am, fused=False, penalize=True)
    for o, ro in zip(outs, routs):
        assert_close_fp32(o, ro, "output")
    for name in rgrads:
        assert_close_fp32(grads[name], rgrads[name], f"d{name}")


@pytest.mark.parametrize("mode", ["recompute", "materialize"])
def test_torch_compile_fullgraph_matches_eager(mode):
    """The kernels are torch.library custom ops (fake impls, registered autograd) and the handle is
    plain Python: dynamo traces weights + three uses + backward without a graph break."""
    T, B, H = 7, 1, 2
    t = make_inputs(T, B, H, hw=16, scale=2.0, seed=6)
    leaves = [t[n] for n in ("q", "k", "p", "pos", "v1", "v2", "x")]

    def layer(q, k, p, pos, v1, v2, x):
        w = A.attention_weights(q, k, p, pos, None, None, True)
        return layer_uses(w, dict(v1=v1, v2=v2, x=x))

    torch._dynamo.reset()
    with use_backend("triton"), configure(attention_mode=mode):
        outs = torch.compile(layer, fullgraph=True, backend="aot_eager")(*leaves)
        got = torch.autograd.grad(sum(o.sum() for o in outs), leaves)
    ref = layer_uses(A.attention_weights_reference(t["q"], t["k"], t["p"], t["pos"], None, None, True), t)
    want = torch.autograd.grad(sum(o.sum() for o in ref), leaves)
    for o, r in zip(outs, ref):
        assert_close_fp32(o, r, "compiled output")
    for name, a, b in zip("q k p pos v1 v2 x".split(), got, want):
        assert_close_fp32(a, b, f"compiled d{name}")


def test_dq_precision_with_large_scores_and_common_key_part():
    """Scores ~100 and keys sharing a large common part: dq = dS @ k cancels that part only if
    sum_j dS[i, j] = 0 to round-off, i.e. the recomputed probabilities sum to 1 to a few ulps
    (row max and 1/sum are kept apart; a single fp32 log-sum-exp of ~150 is off by ~1e-5).
    Relative error vs an fp64 reference must stay within 3x the fp32 reference's own."""
    T, B, H = 21, 1, 1
    g = torch.Generator().manual_seed(7)
    base = dict(q=torch.randn(T, B, H, 16, generator=g) * 2.5,
                k=torch.randn(T, B, H, 16, generator=g) * 0.5 + 5.0 * torch.randn(16, generator=g),
                p=torch.randn(T, B, H, 4, generator=g), pos=torch.randn(2 * T - 1, H, 4, generator=g))
    v = torch.randn(H, B, T, 8, generator=g)
    dout = torch.randn(H, B, T, 8, generator=g)

    def dq(dtype, fused):
        ins = [base[n].to(DEVICE, dtype).requires_grad_() for n in ("q", "k", "p", "pos")]
        if fused:
            with use_backend("triton"), configure(attention_mode="recompute"):
                out = A.attention_apply(A.attention_weights(*ins, None, None), v.to(DEVICE, dtype))
        else:
            out = A.attention_apply(A.attention_weights_reference(*ins, None, None), v.to(DEVICE, dtype))
        return torch.autograd.grad(out, ins[0], dout.to(DEVICE, dtype))[0].double()

    with torch.no_grad():
        assert A.attention_scores_reference(base["q"], base["k"], base["p"], base["pos"], None, None).abs().max() > 60
    truth = dq(torch.float64, False)

    def rel(x):
        return ((x - truth).norm() / truth.norm()).item()

    fused_err, ref_err = rel(dq(torch.float32, True)), rel(dq(torch.float32, False))
    assert fused_err <= 3 * ref_err + 1e-7, (fused_err, ref_err)
