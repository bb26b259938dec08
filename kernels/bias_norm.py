"""Triton kernels for BiasNorm (formula and saved tensors: zipformer_fast/ops/bias_norm.py).

Rows of length D (the channel dim) are processed whole: BLOCK_D = next_pow2(D), BLOCK_M rows per
tile, all statistics in fp32.

forward : y = x * s * r,  r = rsqrt(mean((x - b)^2)), s = exp(log_scale); writes y and r (fp32/row).
backward: with c = sum_j g_j x_j per row,
    dx   = s r (g - r^2 c (x - b) / D)
    db   = sum_rows s r^3 c (x - b) / D
    dlog = sum_rows s r c
  db / dlog are reduced without atomics: P (~4 per SM) programs each own a contiguous range of
  rows and write one partial row (P, D + 1) (db, then dlog in the last column); one fold launch
  (_common.fold_rows) sums the partials into the parameters' dtypes.

Launch configs are fixed per row width: a forward tile holds ~4096 elements (16 per thread with
8 warps: four 16-byte vectors in fp32), a backward tile ~2048 (it holds g, x and dx).
"""
import torch
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, fold_rows, next_pow2, reduction_programs


def _fwd_config(block_d: int):
    """(BLOCK_M, num_warps) for the forward."""
    if INTERPRET:
        return 64, 4
    bm = max(1, min(16, 4096 // block_d))
    return bm, (8 if bm * block_d >= 4096 else 4)


def _bwd_config(block_d: int):
    if INTERPRET:
        return 32, 4
    bm = max(1, min(8, 2048 // block_d))
    return bm, (8 if bm * block_d >= 2048 else 4)


@triton.jit
def bias_norm_fwd_kernel(x_ptr, b_ptr, ls_ptr, y_ptr, r_ptr, n_rows, D, stride_x,
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
    ms = tl.where(rmask, tl.sum(xb * xb, axis=1) / D, 1.0)  # padding rows: avoid 1/0
    r = 1.0 / tl.sqrt(ms)  # no epsilon, as in icefall
    s = tl.exp(tl.load(ls_ptr).to(tl.float32))
    y = x * (r * s)[:, None]
    tl.store(y_ptr + rows64[:, None] * D + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(r_ptr + rows, r, mask=rmask)


@triton.jit
def bias_norm_bwd_kernel(g_ptr, x_ptr, b_ptr, ls_ptr, r_ptr, dx_ptr, part_ptr,
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
        r = tl.load(r_ptr + rows, mask=rmask, other=0.0)
        c = tl.sum(g * x, axis=1)
        xb = tl.where(m, x - b[None, :], 0.0)
        k = r * r * c / D
        dx = (s * r)[:, None] * (g - k[:, None] * xb)
        tl.store(dx_ptr + rows64[:, None] * D + cols[None, :], dx.to(dx_ptr.dtype.element_ty), mask=m)
        db_acc += tl.sum((s * r * k)[:, None] * xb, axis=0)
        dls_acc += s * r * c
    part = part_ptr + pid.to(tl.int64) * (D + 1)
    tl.store(part + cols, db_acc, mask=cmask)
    tl.store(part + D, tl.sum(dls_acc, axis=0))


def forward(x2, bias, log_scale, y2, rstd) -> None:
    """x2 (N, D) with unit column stride; y2 (N, D) contiguous; rstd (N,) fp32."""
    n, d = x2.shape
    block_d = next_pow2(d)
    bm, warps = _fwd_config(block_d)
    bias_norm_fwd_kernel[(cdiv(n, bm),)](x2, bias, log_scale, y2, rstd, n, d, x2.stride(0),
                                         BLOCK_M=bm, BLOCK_D=block_d, num_warps=warps)


def backward(g2, x2, bias, log_scale, rstd, dx2, bias_dtype, log_scale_dtype):
    """Writes dx2; returns (dbias (D,) in bias_dtype, dlog_scale (1,) in log_scale_dtype)."""
    n, d = x2.shape
    progs = reduction_programs(n, x2.device)
    block_d = next_pow2(d)
    bm, warps = _bwd_config(block_d)
    part = torch.empty((progs, d + 1), dtype=torch.float32, device=x2.device)
    bias_norm_bwd_kernel[(progs,)](g2, x2, bias, log_scale, rstd, dx2, part, n, d, cdiv(n, progs), x2.stride(0),
                                   BLOCK_M=bm, BLOCK_D=block_d, num_warps=warps)
    dbias = torch.empty((d,), dtype=bias_dtype, device=x2.device)
    dls = torch.empty((1,), dtype=log_scale_dtype, device=x2.device)
    fold_rows(part, dbias, dls)
    return dbias, dls


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        p = {"b_ptr": "fp32", "ls_ptr": "fp32", "r_ptr": "fp32", "part_ptr": "fp32"}
        # Zipformer's widths, each its own (BLOCK_M, num_warps): all in fp16, the middle one otherwise.
        for d in ((192, 512, 1024) if dt == "fp16" else (512,)):
            block_d = next_pow2(d)
            bm, w = _fwd_config(block_d)
            out.append(spec(bias_norm_fwd_kernel, {"BLOCK_M": bm, "BLOCK_D": block_d}, p, dt, num_warps=w,
                            tag=f"{dt},D={block_d}"))
            bm, w = _bwd_config(block_d)
            out.append(spec(bias_norm_bwd_kernel, {"BLOCK_M": bm, "BLOCK_D": block_d}, p, dt, num_warps=w,
                            tag=f"{dt},D={block_d}"))
    return out
