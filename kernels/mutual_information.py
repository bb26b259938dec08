"""Triton kernels for the mutual-information (RNN-T lattice) recursion of
zipformer_fast/ops/mutual_information.py: same recursion, same boundary semantics, same outputs.

One program per sequence walks the anti-diagonals k = s + t of the (S+1, T+1) lattice; each lane
owns one s (so t = k - s) and every diagonal is a single vector step. Diagonal k reads diagonal
k-1 (and k-2 for the modified topology) back from global memory written by other lanes of the
same program, so a `tl.debug_barrier()` (__syncthreads: global writes of the block become visible
to the block) separates diagonals. The torch path needs ~4 kernel launches per diagonal; this is
one launch for the whole sweep.

- mi_forward_kernel: alpha (B, S+1, T+1) (only cells inside each boundary rectangle are written).
- mi_backward_kernel: the beta sweep, and on the same diagonal the occupation posteriors
  px_grad = exp(alpha + px + beta(symbol successor) - total), py_grad likewise (zero outside the
  rectangle, and for sequences whose total is not finite).
Math runs in the input dtype (fp32, or fp64 for gradcheck-style tests).
"""
import triton
import triton.language as tl

from ._common import constexpr_order

MAX_BLOCK_S = 4096  # beyond this many symbols the caller uses the torch wavefront


@triton.jit
def _logaddexp(a, b):
    # -inf ⊕ -inf must stay -inf without producing NaN from (-inf) - (-inf).
    m = tl.maximum(a, b)
    m = tl.where(m == float("-inf"), 0.0, m)
    return m + tl.log(tl.exp(a - m) + tl.exp(b - m))


@triton.jit
def mi_forward_kernel(px_ptr, py_ptr, p_ptr, bnd_ptr, S, T, TX, K,
                      MODIFIED: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    s_begin = tl.load(bnd_ptr + b * 4 + 0).to(tl.int32)
    t_begin = tl.load(bnd_ptr + b * 4 + 1).to(tl.int32)
    s_end = tl.load(bnd_ptr + b * 4 + 2).to(tl.int32)
    t_end = tl.load(bnd_ptr + b * 4 + 3).to(tl.int32)
    px_base = px_ptr + b * S * TX
    py_base = py_ptr + b * (S + 1) * T
    p_base = p_ptr + b * (S + 1) * (T + 1)
    s = tl.arange(0, BLOCK_S)
    for k in range(0, K):
        t = k - s
        inside = (s >= s_begin) & (s <= s_end) & (t >= t_begin) & (t <= t_end)
        # Blank arc from (s, t-1).
        ok_y = inside & (t - 1 >= t_begin)
        a_y = (tl.load(p_base + s * (T + 1) + t - 1, mask=ok_y, other=float("-inf"))
               + tl.load(py_base + s * T + t - 1, mask=ok_y, other=float("-inf")))
        # Symbol arc from (s-1, t) regular / (s-1, t-1) modified.
        if MODIFIED:
            tp = t - 1
        else:
            tp = t
        ok_x = inside & (s - 1 >= s_begin) & (tp >= t_begin)
        a_x = (tl.load(p_base + (s - 1) * (T + 1) + tp, mask=ok_x, other=float("-inf"))
               + tl.load(px_base + (s - 1) * TX + tp, mask=ok_x, other=float("-inf")))
        val = _logaddexp(a_x, a_y)
        val = tl.where((s == s_begin) & (t == t_begin), 0.0, val)
        tl.store(p_base + s * (T + 1) + t, val, mask=inside)
        tl.debug_barrier()


@triton.jit
def mi_backward_kernel(px_ptr, py_ptr, p_ptr, beta_ptr, tot_ptr, pxg_ptr, pyg_ptr, bnd_ptr,
                       S, T, TX, K, MODIFIED: tl.constexpr, BLOCK_S: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    s_begin = tl.load(bnd_ptr + b * 4 + 0).to(tl.int32)
    t_begin = tl.load(bnd_ptr + b * 4 + 1).to(tl.int32)
    s_end = tl.load(bnd_ptr + b * 4 + 2).to(tl.int32)
    t_end = tl.load(bnd_ptr + b * 4 + 3).to(tl.int32)
    # The launcher stores +inf for sequences without a finite total: exp(x - inf) = 0 then gives
    # them zero gradient without a NaN-prone branch here.
    total = tl.load(tot_ptr + b)
    px_base = px_ptr + b * S * TX
    py_base = py_ptr + b * (S + 1) * T
    p_base = p_ptr + b * (S + 1) * (T + 1)
    beta_base = beta_ptr + b * (S + 1) * (T + 1)
    pxg_base = pxg_ptr + b * S * TX
    pyg_base = pyg_ptr + b * (S + 1) * T
    s = tl.arange(0, BLOCK_S)
    for kk in range(0, K):
        k = K - 1 - kk
        t = k - s
        inside = (s >= s_begin) & (s <= s_end) & (t >= t_begin) & (t <= t_end)
        # Blank arc to (s, t+1).
        ok_y = inside & (t + 1 <= t_end)
        a_y = (tl.load(py_base + s * T + t, mask=ok_y, other=float("-inf"))
               + tl.load(beta_base + s * (T + 1) + t + 1, mask=ok_y, other=float("-inf")))
        # Symbol arc to (s+1, t) regular / (s+1, t+1) modified.
        if MODIFIED:
            ts = t + 1
        else:
            ts = t
        ok_x = inside & (s + 1 <= s_end) & (ts <= t_end)
        a_x = (tl.load(px_base + s * TX + t, mask=ok_x, other=float("-inf"))
               + tl.load(beta_base + (s + 1) * (T + 1) + ts, mask=ok_x, other=float("-inf")))
        val = _logaddexp(a_x, a_y)
        val = tl.where((s == s_end) & (t == t_end), 0.0, val)
        tl.store(beta_base + s * (T + 1) + t, val, mask=inside)
        alpha = tl.load(p_base + s * (T + 1) + t, mask=inside, other=float("-inf"))
        gx = tl.where(ok_x, tl.exp(alpha + a_x - total), 0.0)
        gy = tl.where(ok_y, tl.exp(alpha + a_y - total), 0.0)
        tl.store(pxg_base + s * TX + t, gx, mask=ok_x)
        tl.store(pyg_base + s * T + t, gy, mask=ok_y)
        tl.debug_barrier()


constexpr_order(mi_forward_kernel, "MODIFIED", "BLOCK_S")  # the launchers pass them positionally
constexpr_order(mi_backward_kernel, "MODIFIED", "BLOCK_S")


def _launch_params(S1: int):
    block = max(triton.next_power_of_2(S1), 32)
    return block, max(1, min(8, block // 128))


def supported(S: int) -> bool:
    return S + 1 <= MAX_BLOCK_S


def forward_and_grads(px, py, boundary, need_grads: bool):
    """Same contract as the torch path: (total (B,), px_grad or None, py_grad or None).

    px (B, S, T or T+1), py (B, S+1, T) contiguous; boundary int64 (B, 4) (never None here)."""
    import torch

    B, S, TX = px.shape
    T = py.shape[-1]
    modified = TX == T
    K = S + T + 1
    px, py = px.contiguous(), py.contiguous()
    boundary = boundary.contiguous()
    block, warps = _launch_params(S + 1)
    p = torch.empty((B, S + 1, T + 1), dtype=px.dtype, device=px.device)
    mi_forward_kernel.run(px, py, p, boundary, S, T, TX, K, modified, block, grid=(B,), warmup=False,
                          num_warps=warps)
    b_idx = torch.arange(B, device=px.device)
    total = p[b_idx, boundary[:, 2], boundary[:, 3]]
    if not need_grads:
        return total, None, None
    beta = torch.empty_like(p)
    px_grad = torch.zeros_like(px)
    py_grad = torch.zeros_like(py)
    safe_total = torch.where(torch.isfinite(total), total, torch.full_like(total, float("inf")))
    mi_backward_kernel.run(px, py, p, beta, safe_total, px_grad, py_grad, boundary, S, T, TX, K, modified, block,
                           grid=(B,), warmup=False, num_warps=warps)
    return total, px_grad, py_grad


def aot_specs(spec, dtypes=None):
    """Ahead-of-time compile specs (tests/aot_compile.py): fp32 (what the losses run in), both
    topologies, the common block (S < 128) plus a large one. fp64 compiles as well (checked once
    by hand) but is left out to keep CI short."""
    out = []
    for modified, block in ((False, 128), (True, 128), (False, 1024)):
        c = {"MODIFIED": modified, "BLOCK_S": block}
        tag = f"fp32,{'modified' if modified else 'regular'},S<{block}"
        for kernel in (mi_forward_kernel, mi_backward_kernel):
            out.append(spec(kernel, c, {"bnd_ptr": "i64"}, default="fp32", tag=tag,
                            num_warps=_launch_params(block)[1]))
    return out
