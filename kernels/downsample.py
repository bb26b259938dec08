"""Triton kernels for SimpleDownsample (formula: zipformer_fast/ops/downsample.py).

x is (T, B, C) with a unit channel stride (T/B strides free, so a channel-truncation view between
stacks is read in place); out is (Tg, B, C), Tg = ceil(T/ds), contiguous. Frame index
t = tg*ds + k is clamped to T-1: that is the reference's padding by repeating the last frame.
w = softmax(bias) (ds floats) and its suffix sums wsuf[k] = sum_{j>=k} w_j are computed by every
program from the (ds,) bias (no host-side torch ops).

forward : out[tg] = sum_k w_k x[min(tg*ds + k, T-1)]                    (one read of x, one write)
backward: dx[t] = g[t // ds] * w[t % ds], except the last frame T-1, which also collects the
          padded positions: g[Tg-1] * wsuf[(T-1) % ds].
          dw_k = sum_{tg, n} g[tg, n] x[min(tg*ds + k, T-1), n], per-program partials (no atomics,
          ~4 programs per SM in total); a second launch sums them and applies the softmax Jacobian,
          dbias = w * (dw - sum_j w_j dw_j), writing dbias in the bias dtype.
"""
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, constexpr_order, next_pow2, programs_along_rows, scratch_fp32

# Forward tile: BLOCK_G groups x BLOCK_N columns, each group reading DS frames (fixed; 2 x 512 over
# 4 warps = 8 outputs and 8 x DS inputs per thread).
FWD_G, FWD_N, FWD_WARPS = (16, 256, 4) if INTERPRET else (2, 512, 4)
BWD_G = 8 if INTERPRET else 2


@triton.jit
def _softmax_weight(b_ptr, k, DS: tl.constexpr):
    """softmax(bias)[k] for a tensor of indices k (bias has DS entries), in fp32."""
    kk = tl.arange(0, DS)
    bb = tl.load(b_ptr + kk).to(tl.float32)
    mx = tl.max(bb, axis=0)
    den = tl.sum(tl.exp(bb - mx), axis=0)
    return tl.exp(tl.load(b_ptr + k).to(tl.float32) - mx) / den


@triton.jit
def downsample_fwd_kernel(x_ptr, b_ptr, out_ptr, T, Tg, B, C, sx_t, sx_b,
                          DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    tg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < B * C
    b = n // C
    ox = b.to(tl.int64) * sx_b + (n - b * C)
    m = (tg < Tg)[:, None] & nmask[None, :]
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for k in tl.static_range(DS):
        t = tl.minimum(tg * DS + k, T - 1)
        x = tl.load(x_ptr + t.to(tl.int64)[:, None] * sx_t + ox[None, :], mask=m, other=0.0).to(tl.float32)
        acc += _softmax_weight(b_ptr, k, DS) * x
    tl.store(out_ptr + tg.to(tl.int64)[:, None] * (B * C) + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def downsample_bwd_kernel(g_ptr, x_ptr, b_ptr, dx_ptr, dw_part_ptr,
                          T, Tg, B, C, g_per_prog, sx_t, sx_b,
                          DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (P, column blocks); dw_part is (P, column blocks, DS).

    A tile is BLOCK_G whole groups = BLOCK_G*DS frames; the gradient row g[t // DS] is gathered
    once per frame (the DS repeats of a row hit L1), so x and g are each read from memory once.
    Tiles start at a multiple of DS, so tile row r always has k = r % DS.
    """
    pid = tl.program_id(0)
    pn = tl.program_id(1)
    n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < B * C
    b = n // C
    ox = b.to(tl.int64) * sx_b + (n - b * C)
    r = tl.arange(0, BLOCK_G * DS)
    k = r % DS
    wk = _softmax_weight(b_ptr, k, DS)
    kk = tl.arange(0, DS)
    wall = _softmax_weight(b_ptr, kk, DS)
    wlast = tl.sum(tl.where(kk[None, :] >= k[:, None], wall[None, :], 0.0), axis=1)  # suffix sums
    start = pid * g_per_prog
    end = tl.minimum(start + g_per_prog, Tg)
    acc = tl.zeros((BLOCK_G * DS, BLOCK_N), dtype=tl.float32)
    for g0 in range(start, end, BLOCK_G):
        t = g0 * DS + r
        tg = t // DS
        m = (tg < end)[:, None] & nmask[None, :]
        g = tl.load(g_ptr + tg.to(tl.int64)[:, None] * (B * C) + n[None, :], mask=m, other=0.0).to(tl.float32)
        tc = tl.minimum(t, T - 1)  # frames past T-1 are the padding: copies of frame T-1
        x = tl.load(x_ptr + tc.to(tl.int64)[:, None] * sx_t + ox[None, :], mask=m, other=0.0).to(tl.float32)
        acc += g * x
        # The padding's gradient goes to frame T-1, whose weight is the suffix sum wsuf[k].
        wt = tl.where(t == T - 1, wlast, wk)
        tl.store(dx_ptr + t.to(tl.int64)[:, None] * (B * C) + n[None, :], (g * wt[:, None]).to(dx_ptr.dtype.element_ty),
                 mask=m & (t < T)[:, None])
    per_row = tl.sum(acc, axis=1)
    dw = tl.sum(tl.where(k[:, None] == kk[None, :], per_row[:, None], 0.0), axis=0)
    tl.store(dw_part_ptr + (pid * tl.num_programs(1) + pn).to(tl.int64) * DS + kk, dw)


@triton.jit
def downsample_dbias_kernel(part_ptr, b_ptr, out_ptr, R, DS: tl.constexpr, BLOCK_R: tl.constexpr):
    """dw = sum of the (R, DS) partials; dbias = w * (dw - sum_j w_j dw_j), w = softmax(bias)."""
    kk = tl.arange(0, DS)
    acc = tl.zeros((BLOCK_R, DS), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        acc += tl.load(part_ptr + rows.to(tl.int64)[:, None] * DS + kk[None, :], mask=(rows < R)[:, None], other=0.0)
    dw = tl.sum(acc, axis=0)
    w = _softmax_weight(b_ptr, kk, DS)
    tl.store(out_ptr + kk, (w * (dw - tl.sum(w * dw, axis=0))).to(out_ptr.dtype.element_ty))


constexpr_order(downsample_fwd_kernel, "DS", "BLOCK_G", "BLOCK_N")  # the launchers pass them positionally
constexpr_order(downsample_bwd_kernel, "DS", "BLOCK_G", "BLOCK_N")
constexpr_order(downsample_dbias_kernel, "DS", "BLOCK_R")


def forward(x, bias, out, ds: int, T: int, Tg: int, B: int, C: int, sx) -> None:
    """x (T, B, C) with strides sx (unit channel stride), out (Tg, B, C) contiguous."""
    downsample_fwd_kernel.run(x, bias, out, T, Tg, B, C, sx[0], sx[1], ds, FWD_G, FWD_N,
                              grid=(cdiv(Tg, FWD_G), cdiv(B * C, FWD_N)), warmup=False, num_warps=FWD_WARPS)


def backward(grad, x, bias, dx, dbias, ds: int, T: int, Tg: int, B: int, C: int, sx) -> None:
    """Writes dx (T, B, C) contiguous and dbias (ds,) in its own dtype."""
    # Fixed (not tuned) column block: the partial buffer's size depends on it.
    block_n = max(64, 2048 // ds) if x.is_cuda else 256
    block_n = min(block_n, next_pow2(B * C))
    n_blocks = cdiv(B * C, block_n)
    progs = programs_along_rows(Tg, n_blocks, x, min_rows=max(2, 16 // max(1, n_blocks)))
    dw_part = scratch_fp32(x, progs * n_blocks * ds)
    downsample_bwd_kernel.run(grad, x, bias, dx, dw_part, T, Tg, B, C, cdiv(Tg, progs), sx[0], sx[1], ds, BWD_G,
                              block_n, grid=(progs, n_blocks), warmup=False,
                              num_warps=4 if block_n * BWD_G * ds <= 2048 else 8)
    downsample_dbias_kernel.run(dw_part, bias, dbias, progs * n_blocks, ds, 64, grid=(1,), warmup=False, num_warps=4)


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        p = {"b_ptr": "fp32", "dw_part_ptr": "fp32", "part_ptr": "fp32"}
        # Every factor Zipformer uses in fp16, with the launcher's block sizes; the largest otherwise.
        for ds in ((2, 4, 8) if dt == "fp16" else (8,)):
            block_n = max(64, 2048 // ds)
            out.append(spec(downsample_fwd_kernel, {"DS": ds, "BLOCK_G": 2, "BLOCK_N": 512}, p, dt, num_warps=4,
                            tag=f"{dt},ds{ds}"))
            out.append(spec(downsample_bwd_kernel, {"DS": ds, "BLOCK_G": 2, "BLOCK_N": block_n}, p, dt,
                            num_warps=4 if block_n * 2 * ds <= 2048 else 8, tag=f"{dt},ds{ds}"))
    out.append(spec(downsample_dbias_kernel, {"DS": 8, "BLOCK_R": 64}, {}, "fp32", num_warps=4))
    return out
