"""Triton kernels for the bypass combiner out = x_orig + (y - x_orig) * c, plain and fused with
SimpleUpsample (ops: zipformer_fast/ops/bypass.py and ops/downsample.py).

Layout: inputs are (T, B, C) with a unit channel stride and any T/B strides (so a channel-
truncation view is read in place). A tile is BLOCK_T frames x BLOCK_N columns of the flattened
(B*C) axis; b = n // C and c = n % C are computed once per column vector, not per element.
The scale has L = C entries (per channel) or L = B*C (per sequence and channel): index n % L.

Backward writes dx, dx_orig and a per-program partial of dscale over its frames, (P, B*C) fp32
(scratch) with P x column blocks ~ 4 programs per SM; one fold launch sums it into the scale's shape. Upsample variant: y is (ceil(T/ds), B, C) and frame t
reads y[t // ds]; dy[t'] sums g * c over the ds frames of group t' (inside one program).
"""
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, constexpr_order, fold_rows, programs_along_rows, scratch_fp32

# Fixed tiles (frames x flattened columns): 2048 elements over 4 warps = 16 per thread, i.e. four
# 16-byte vectors per tensor in fp32. The interpreter gets big tiles (it pays per program).
FWD_T, FWD_N, FWD_WARPS = (32, 256, 4) if INTERPRET else (4, 512, 4)
BWD_T, BWD_N, BWD_WARPS = (32, 256, 4) if INTERPRET else (4, 256, 4)
UP_G, UP_N, UP_WARPS = (16, 256, 4) if INTERPRET else (2, 512, 4)
UP_BWD_G, UP_BWD_N = (16, 256) if INTERPRET else (2, 256)


@triton.jit
def _cols(n0, BLOCK_N: tl.constexpr, B, C, sb):
    """Column vector n, its in-bounds mask, and the (b * sb + c) offset of each column."""
    n = n0 + tl.arange(0, BLOCK_N)
    b = n // C
    return n, n < B * C, b.to(tl.int64) * sb + (n - b * C)


@triton.jit
def bypass_fwd_kernel(xo_ptr, y_ptr, c_ptr, out_ptr, T, B, C, L, sxo_t, sxo_b, sy_t, sy_b,
                      BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    n, nmask, oxo = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sxo_b)
    _, _, oy = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sy_b)
    m = (t < T)[:, None] & nmask[None, :]
    t64 = t.to(tl.int64)[:, None]
    xo = tl.load(xo_ptr + t64 * sxo_t + oxo[None, :], mask=m, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + t64 * sy_t + oy[None, :], mask=m, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + n % L, mask=nmask, other=0.0).to(tl.float32)
    out = xo + (y - xo) * c[None, :]
    tl.store(out_ptr + t64 * (B * C) + n[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def bypass_bwd_kernel(g_ptr, xo_ptr, y_ptr, c_ptr, dxo_ptr, dy_ptr, dc_part_ptr,
                      T, B, C, L, t_per_prog, sxo_t, sxo_b, sy_t, sy_b,
                      BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    n, nmask, oxo = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sxo_b)
    _, _, oy = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sy_b)
    c = tl.load(c_ptr + n % L, mask=nmask, other=0.0).to(tl.float32)
    start = pid * t_per_prog
    end = tl.minimum(start + t_per_prog, T)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for t0 in range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        m = (t < end)[:, None] & nmask[None, :]
        t64 = t.to(tl.int64)[:, None]
        g = tl.load(g_ptr + t64 * (B * C) + n[None, :], mask=m, other=0.0).to(tl.float32)
        xo = tl.load(xo_ptr + t64 * sxo_t + oxo[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + t64 * sy_t + oy[None, :], mask=m, other=0.0).to(tl.float32)
        tl.store(dxo_ptr + t64 * (B * C) + n[None, :], (g * (1.0 - c[None, :])).to(dxo_ptr.dtype.element_ty), mask=m)
        tl.store(dy_ptr + t64 * (B * C) + n[None, :], (g * c[None, :]).to(dy_ptr.dtype.element_ty), mask=m)
        acc += tl.sum(g * (y - xo), axis=0)
    tl.store(dc_part_ptr + pid.to(tl.int64) * (B * C) + n, acc, mask=nmask)


@triton.jit
def upsample_bypass_fwd_kernel(xo_ptr, y_ptr, c_ptr, out_ptr, T, Tg, B, C, L, sxo_t, sxo_b, sy_t, sy_b,
                               DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    tg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    n, nmask, oxo = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sxo_b)
    _, _, oy = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sy_b)
    c = tl.load(c_ptr + n % L, mask=nmask, other=0.0).to(tl.float32)[None, :]
    my = (tg < Tg)[:, None] & nmask[None, :]
    y = tl.load(y_ptr + tg.to(tl.int64)[:, None] * sy_t + oy[None, :], mask=my, other=0.0).to(tl.float32)
    for k in tl.static_range(DS):
        t = tg * DS + k
        m = (t < T)[:, None] & nmask[None, :]
        t64 = t.to(tl.int64)[:, None]
        xo = tl.load(xo_ptr + t64 * sxo_t + oxo[None, :], mask=m, other=0.0).to(tl.float32)
        out = xo + (y - xo) * c
        tl.store(out_ptr + t64 * (B * C) + n[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def upsample_bypass_bwd_kernel(g_ptr, xo_ptr, y_ptr, c_ptr, dxo_ptr, dy_ptr, dc_part_ptr,
                               T, Tg, B, C, L, g_per_prog, sxo_t, sxo_b, sy_t, sy_b,
                               DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    n, nmask, oxo = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sxo_b)
    _, _, oy = _cols(tl.program_id(1) * BLOCK_N, BLOCK_N, B, C, sy_b)
    c = tl.load(c_ptr + n % L, mask=nmask, other=0.0).to(tl.float32)[None, :]
    start = pid * g_per_prog
    end = tl.minimum(start + g_per_prog, Tg)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g0 in range(start, end, BLOCK_G):
        tg = g0 + tl.arange(0, BLOCK_G)
        my = (tg < end)[:, None] & nmask[None, :]
        tg64 = tg.to(tl.int64)[:, None]
        y = tl.load(y_ptr + tg64 * sy_t + oy[None, :], mask=my, other=0.0).to(tl.float32)
        gsum = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
        for k in tl.static_range(DS):
            t = tg * DS + k
            m = my & (t < T)[:, None]
            t64 = t.to(tl.int64)[:, None]
            g = tl.load(g_ptr + t64 * (B * C) + n[None, :], mask=m, other=0.0).to(tl.float32)
            xo = tl.load(xo_ptr + t64 * sxo_t + oxo[None, :], mask=m, other=0.0).to(tl.float32)
            tl.store(dxo_ptr + t64 * (B * C) + n[None, :], (g * (1.0 - c)).to(dxo_ptr.dtype.element_ty), mask=m)
            gsum += g
            acc += tl.sum(g * (y - xo), axis=0)
        tl.store(dy_ptr + tg64 * (B * C) + n[None, :], (gsum * c).to(dy_ptr.dtype.element_ty), mask=my)
    tl.store(dc_part_ptr + pid.to(tl.int64) * (B * C) + n, acc, mask=nmask)


constexpr_order(bypass_fwd_kernel, "BLOCK_T", "BLOCK_N")  # the launchers pass them positionally
constexpr_order(bypass_bwd_kernel, "BLOCK_T", "BLOCK_N")
constexpr_order(upsample_bypass_fwd_kernel, "DS", "BLOCK_G", "BLOCK_N")
constexpr_order(upsample_bypass_bwd_kernel, "DS", "BLOCK_G", "BLOCK_N")


def forward(x_orig, y, scale_flat, out, T: int, B: int, C: int, sxo, sy) -> None:
    """sxo / sy: x_orig's and y's strides (T, B, 1)."""
    BC = B * C
    bypass_fwd_kernel.run(x_orig, y, scale_flat, out, T, B, C, scale_flat.numel(), sxo[0], sxo[1], sy[0], sy[1],
                          FWD_T, FWD_N, grid=(cdiv(T, FWD_T), cdiv(BC, FWD_N)), warmup=False, num_warps=FWD_WARPS)


def backward(grad, x_orig, y, scale_flat, dxo, dy, dscale, T: int, B: int, C: int, sxo, sy) -> None:
    """grad, dxo and dy contiguous; writes them and dscale (scale_flat's entries, in its dtype)."""
    BC = B * C
    n_blocks = cdiv(BC, BWD_N)
    progs = programs_along_rows(T, n_blocks, x_orig, min_rows=4)
    dc_part = scratch_fp32(x_orig, progs * BC)
    L = scale_flat.numel()
    bypass_bwd_kernel.run(grad, x_orig, y, scale_flat, dxo, dy, dc_part, T, B, C, L, cdiv(T, progs),
                          sxo[0], sxo[1], sy[0], sy[1], BWD_T, BWD_N, grid=(progs, n_blocks), warmup=False,
                          num_warps=BWD_WARPS)
    fold_rows(dc_part, progs * BC // L, dscale)  # rows of length L: for L == C, the B sequences fold as well


def upsample_forward(x_orig, y_down, scale_flat, out, ds: int, T: int, B: int, C: int, sxo, sy) -> None:
    Tg = y_down.shape[0]
    upsample_bypass_fwd_kernel.run(x_orig, y_down, scale_flat, out, T, Tg, B, C, scale_flat.numel(),
                                   sxo[0], sxo[1], sy[0], sy[1], ds, UP_G, UP_N,
                                   grid=(cdiv(Tg, UP_G), cdiv(B * C, UP_N)), warmup=False, num_warps=UP_WARPS)


def upsample_backward(grad, x_orig, y_down, scale_flat, dxo, dy, ds: int, dscale, T: int, B: int, C: int,
                      sxo, sy) -> None:
    Tg = y_down.shape[0]
    BC = B * C
    n_blocks = cdiv(BC, UP_BWD_N)
    progs = programs_along_rows(Tg, n_blocks, x_orig, min_rows=2)
    dc_part = scratch_fp32(x_orig, progs * BC)
    L = scale_flat.numel()
    upsample_bypass_bwd_kernel.run(grad, x_orig, y_down, scale_flat, dxo, dy, dc_part, T, Tg, B, C, L,
                                   cdiv(Tg, progs), sxo[0], sxo[1], sy[0], sy[1], ds, UP_BWD_G, UP_BWD_N,
                                   grid=(progs, n_blocks), warmup=False, num_warps=4)
    fold_rows(dc_part, progs * BC // L, dscale)


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        p = {"c_ptr": "fp32", "dc_part_ptr": "fp32"}
        out.append(spec(bypass_fwd_kernel, {"BLOCK_T": 4, "BLOCK_N": 512}, p, dt, num_warps=4))
        out.append(spec(bypass_bwd_kernel, {"BLOCK_T": 4, "BLOCK_N": 256}, p, dt, num_warps=4))
        # DS unrolls the frame loop: every factor Zipformer uses in fp16, the largest otherwise.
        for ds in ((2, 4, 8) if dt == "fp16" else (8,)):
            out.append(spec(upsample_bypass_fwd_kernel, {"DS": ds, "BLOCK_G": 2, "BLOCK_N": 512}, p, dt, num_warps=4,
                            tag=f"{dt},ds{ds}"))
            out.append(spec(upsample_bypass_bwd_kernel, {"DS": ds, "BLOCK_G": 2, "BLOCK_N": 256}, p, dt, num_warps=4,
                            tag=f"{dt},ds{ds}"))
    return out
