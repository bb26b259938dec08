"""Triton kernels for BiasNorm (formula and saved tensors: zipformer_fast/ops/bias_norm.py).

Rows of length D (the channel dim) are processed whole: BLOCK_D = next_pow2(D), BLOCK_M rows per
tile, all statistics in fp32.

forward : y = x * s * r,  r = rsqrt(mean((x - b)^2)), s = exp(log_scale); writes y only.
backward: r again from x (the row is loaded whole anyway: one more in-register sum instead of a
    saved (rows,) buffer, whose allocation cost the forward ~1.6 us of host time); with
    c = sum_j g_j x_j per row,
    dx   = s r (g - r^2 c (x - b) / D)
    db   = sum_rows s r^3 c (x - b) / D
    dlog = sum_rows s r c
  db / dlog are reduced without atomics: P (~4 per SM) programs each own a contiguous range of
  rows and write one partial row (P, D + 1) (db, then dlog in the last column); one fold launch
  (_common.fold_rows) sums the partials into the parameters' dtypes.

Launch configs are fixed per row width: a forward tile holds ~4096 elements (16 per thread with
8 warps: four 16-byte vectors in fp32), a backward tile ~2048 (it holds g, x and dx).
"""
import triton
import triton.language as tl

from ._common import (cdiv, constexpr_order, fold_rows, reduction_programs, row_kernel_specs, row_plan, row_tile,
                      scratch_fp32)


def _fwd_config(block_d: int):
    """(BLOCK_M, num_warps) for the forward."""
    return row_tile(block_d, 4096, 16, 4096, 64)


def _bwd_config(block_d: int):
    return row_tile(block_d, 2048, 8, 2048, 32)


@triton.jit
def row_rsqrt(xb, rmask, D):
    """r = rsqrt(mean((x - b)^2)) of each row of a tile (xb = x - b, zero outside the row); no
    epsilon, as in icefall. Padding rows get 0 (their mean square is replaced, not divided by)."""
    return tl.where(rmask, 1.0 / tl.sqrt(tl.where(rmask, tl.sum(xb * xb, axis=1) / D, 1.0)), 0.0)


@triton.jit
def row_backward(dy, x, xb, r, s, D):
    """BiasNorm's backward on a tile of whole rows, given dL/dy: (dx, the tile's bias-gradient
    column sums, the per-row log_scale gradient). With c = sum_j dy_j x_j and k = r^2 c / D:
    dx = s r (dy - k xb), dbias = sum_rows s r k xb, dlog_scale = s r c."""
    c = tl.sum(dy * x, axis=1)
    k = r * r * c / D
    dx = (s * r)[:, None] * (dy - k[:, None] * xb)
    return dx, tl.sum((s * r * k)[:, None] * xb, axis=0), s * r * c


@triton.jit
def bias_norm_fwd_kernel(x_ptr, b_ptr, ls_ptr, y_ptr, n_rows, D, stride_x,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    xb = tl.where(m, x - b[None, :], 0.0)
    r = row_rsqrt(xb, rmask, D)
    s = tl.exp(tl.load(ls_ptr).to(tl.float32))
    y = x * (r * s)[:, None]
    tl.store(y_ptr + rows64[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def bias_norm_bwd_kernel(g_ptr, x_ptr, b_ptr, ls_ptr, dx_ptr, part_ptr,
                         n_rows, D, rows_per_prog, stride_x,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    start = pid * rows_per_prog
    end = tl.minimum(start + rows_per_prog, n_rows)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    b = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    s = tl.exp(tl.load(ls_ptr).to(tl.float32))
    db_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dls_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r0 in range(start, end, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = rows < end
        m = rmask[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)
        g = tl.load(g_ptr + rows64[:, None] * D + cols[None, :], mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xb = tl.where(m, x - b[None, :], 0.0)
        r = row_rsqrt(xb, rmask, D)
        dx, db_rows, dls_rows = row_backward(g, x, xb, r, s, D)
        tl.store(dx_ptr + rows64[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
        db_acc += db_rows
        dls_acc += dls_rows
    part = part_ptr + pid.to(tl.int64) * (D + 1)
    tl.store(part + cols, db_acc, mask=cmask)
    tl.store(part + D, tl.sum(dls_acc, axis=0))


constexpr_order(bias_norm_fwd_kernel, "BLOCK_M", "BLOCK_D")  # the launchers pass them positionally
constexpr_order(bias_norm_bwd_kernel, "BLOCK_M", "BLOCK_D")


def forward(x2, n: int, d: int, stride_x: int, bias, log_scale, y) -> None:
    """x2: n rows of d with unit column stride and row stride stride_x; y contiguous (n rows of d).
    Shapes come in as ints: the launcher takes no views (host time)."""
    block_d, bm, warps = row_plan(_fwd_config, d)
    bias_norm_fwd_kernel.run(x2, bias, log_scale, y, n, d, stride_x, bm, block_d, grid=(cdiv(n, bm),), warmup=False,
                             num_warps=warps)


def backward(g, x2, n: int, d: int, stride_x: int, bias, log_scale, dx, dbias, dls) -> None:
    """g and dx contiguous (n rows of d), x2 as in forward; writes dx, dbias (d entries) and dls
    (one entry), each in its own dtype."""
    progs = reduction_programs(n, x2)
    block_d, bm, warps = row_plan(_bwd_config, d)
    part = scratch_fp32(x2, progs * (d + 1))
    bias_norm_bwd_kernel.run(g, x2, bias, log_scale, dx, part, n, d, cdiv(n, progs), stride_x, bm, block_d,
                             grid=(progs,), warmup=False, num_warps=warps)
    fold_rows(part, progs, dbias, dls)


def aot_specs(spec, dtypes):
    return row_kernel_specs(spec, dtypes, [(bias_norm_fwd_kernel, _fwd_config), (bias_norm_bwd_kernel, _bwd_config)],
                            {"b_ptr": "fp32", "ls_ptr": "fp32", "part_ptr": "fp32"})
