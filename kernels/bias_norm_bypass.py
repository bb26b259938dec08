"""Triton kernels for the end of a Zipformer layer, bypass(x_orig, bias_norm(x), c), in one pass
(formula, dtypes and saved tensors: zipformer_fast/ops/bias_norm_bypass.py).

Rows are the (t, b) frames of (T, B, D) tensors with a unit channel stride (T and B strides are
free); a row is processed whole (BLOCK_D = next_pow2(D)), all statistics in fp32. The scale c is
one row of D (c_sb = 0) or one row per sequence (c_sb = D).

forward : y = round_x(x * s * r), r = rsqrt(mean((x - bias)^2)), s = exp(log_scale);
          out = x_orig + (y - x_orig) * c. y is never written (round_x: to x's dtype, as the
          two-op composition stores it).
backward: y again from x; dx_orig = g (1 - c); dy = round_x(g c); dc += g (y - x_orig); then
          BiasNorm's backward of dy with k = r^2 sum(dy x) / D: dx = s r (dy - k (x - bias)),
          dbias += s r k (x - bias), dlog_scale += s r sum(dy x).
  Programs form a (P, B) grid: program (p, b) walks its range of frames of sequence b, so the
  scale's partial gradient is one row of D whichever shape c has. Partials (fp32 scratch): for a
  per-channel c one row [dc | dbias | dlog_scale] per program, folded (over P and B) by one
  _common.fold_rows launch; for a per-sequence c a (P, B, D) block for c, folded over P only,
  and a (P, B, D + 1) block for bias / log_scale, both folded by one fold_two_blocks launch.
  Two launches in all, against five for the two ops.

Launch configs are fixed per row width (no autotuning): ~2048 elements per forward tile, ~1024
per backward tile over 8 warps (it holds g, x, x_orig and their products).
"""
import triton
import triton.language as tl

from .bias_norm import row_backward, row_rsqrt
from ._common import (cdiv, constexpr_order, fold_rows, fold_two_blocks, programs_along_rows, row_kernel_specs,
                      row_plan, row_tile, scratch_fp32)

def _fwd_config(block_d: int):
    """(BLOCK_M, num_warps) for the forward."""
    return row_tile(block_d, 2048, 16, 2048, 64)


def _bwd_config(block_d: int):
    return row_tile(block_d, 1024, 8, 1024, 32)  # ~4 elements per thread and tile: ~6 tiles are live


@triton.jit
def bias_norm_bypass_fwd_kernel(xo_ptr, x_ptr, b_ptr, ls_ptr, c_ptr, out_ptr, n_rows, B, D,
                                sxo_t, sxo_b, sx_t, sx_b, c_sb,
                                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < D
    m = rmask[:, None] & cmask[None, :]
    t = (rows // B).to(tl.int64)
    bb = rows % B
    x = tl.load(x_ptr + (t * sx_t + bb * sx_b)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    xb = tl.where(m, x - bias[None, :], 0.0)
    r = row_rsqrt(xb, rmask, D)
    s = tl.exp(tl.load(ls_ptr).to(tl.float32))
    y = (x * (r * s)[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    xo = tl.load(xo_ptr + (t * sxo_t + bb * sxo_b)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + (bb * c_sb)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
    out = xo + (y - xo) * c
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def bias_norm_bypass_bwd_kernel(g_ptr, xo_ptr, x_ptr, b_ptr, ls_ptr, c_ptr, dxo_ptr, dx_ptr, part_ptr,
                                T, B, D, t_per_prog, sxo_t, sxo_b, sx_t, sx_b, c_sb, c_stride, n_off, n_stride,
                                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    bb = tl.program_id(1)
    t_start = pid * t_per_prog
    t_end = tl.minimum(t_start + t_per_prog, T)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    bias = tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + bb * c_sb + cols, mask=cmask, other=0.0).to(tl.float32)
    s = tl.exp(tl.load(ls_ptr).to(tl.float32))
    dc_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    dls_acc = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for t0 in range(t_start, t_end, BLOCK_M):
        t = t0 + tl.arange(0, BLOCK_M)
        tmask = t < t_end
        m = tmask[:, None] & cmask[None, :]
        t64 = t.to(tl.int64)
        orow = (t64 * B + bb) * D  # row offset in the contiguous g / dx / dx_orig
        g = tl.load(g_ptr + orow[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + (t64 * sx_t + bb * sx_b)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xo = tl.load(xo_ptr + (t64 * sxo_t + bb * sxo_b)[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xb = tl.where(m, x - bias[None, :], 0.0)
        r = row_rsqrt(xb, tmask, D)
        y = (x * (r * s)[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
        tl.store(dxo_ptr + orow[:, None] + cols[None, :], (g * (1.0 - c[None, :])).to(dxo_ptr.dtype.element_ty),
                 mask=m)
        dc_acc += tl.sum(tl.where(m, g * (y - xo), 0.0), axis=0)
        dy = (g * c[None, :]).to(x_ptr.dtype.element_ty).to(tl.float32)
        dx, db_rows, dls_rows = row_backward(dy, x, xb, r, s, D)
        tl.store(dx_ptr + orow[:, None] + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
        db_acc += db_rows
        dls_acc += dls_rows
    prow = pid.to(tl.int64) * B + bb
    tl.store(part_ptr + prow * c_stride + cols, dc_acc, mask=cmask)
    tl.store(part_ptr + n_off + prow * n_stride + cols, db_acc, mask=cmask)
    tl.store(part_ptr + n_off + prow * n_stride + D, tl.sum(dls_acc, axis=0))


constexpr_order(bias_norm_bypass_fwd_kernel, "BLOCK_M", "BLOCK_D")  # the launchers pass them positionally
constexpr_order(bias_norm_bypass_bwd_kernel, "BLOCK_M", "BLOCK_D")


def forward(x_orig, x, bias, log_scale, scale, c_sb: int, out, T: int, B: int, D: int, sxo, sx) -> None:
    """x_orig, x (T, B, D) with unit channel strides (strides sxo, sx); bias (D,), scale D or B*D
    entries in order (c_sb 0 or D), out (T, B, D) contiguous."""
    block_d, bm, warps = row_plan(_fwd_config, D)
    bias_norm_bypass_fwd_kernel.run(x_orig, x, bias, log_scale, scale, out, T * B, B, D, sxo[0], sxo[1], sx[0], sx[1],
                                    c_sb, bm, block_d, grid=(cdiv(T * B, bm),), warmup=False, num_warps=warps)


def backward(g, x_orig, x, bias, log_scale, scale, c_sb: int, dxo, dx, dscale, dbias, dls,
             T: int, B: int, D: int, sxo, sx) -> None:
    """g, dxo, dx (T, B, D) contiguous; writes them and dscale / dbias / dls (each in its dtype).
    Partials in scratch, one row per program (p, b): for a per-channel scale [dc | dbias | dls]
    (2D + 1), all three folded by one launch (B folds with the programs); for a per-sequence
    scale the (P, B, D) dc block, folded over P only, then the (P, B, D + 1) bias / log_scale
    block (one launch)."""
    block_d, bm, warps = row_plan(_bwd_config, D)
    progs = programs_along_rows(T, B, x, min_rows=4)  # a (P, B) grid: partials O(SMs x D)
    rows = progs * B
    if c_sb == 0:
        c_stride, n_off, n_stride = 2 * D + 1, D, 2 * D + 1
    else:
        c_stride, n_off, n_stride = D, rows * D, D + 1
    part = scratch_fp32(x, rows * (2 * D + 1))
    bias_norm_bypass_bwd_kernel.run(g, x_orig, x, bias, log_scale, scale, dxo, dx, part, T, B, D, cdiv(T, progs),
                                    sxo[0], sxo[1], sx[0], sx[1], c_sb, c_stride, n_off, n_stride, bm, block_d,
                                    grid=(progs, B), warmup=False, num_warps=warps)
    if c_sb == 0:
        fold_rows(part, rows, dscale, dbias, dls)
    else:
        fold_two_blocks(part, progs, dscale, n_off, rows, dbias, dls)


def aot_specs(spec, dtypes):
    return row_kernel_specs(spec, dtypes, [(bias_norm_bypass_fwd_kernel, _fwd_config), (bias_norm_bypass_bwd_kernel, _bwd_config)],
                            {"b_ptr": "fp32", "ls_ptr": "fp32", "c_ptr": "fp32", "part_ptr": "fp32"})
