"""Triton kernels for BiasNorm (formula and saved tensors: zipformer_fast/ops/bias_norm.py).

Rows of length D (the channel dim) are processed whole: BLOCK_D = next_pow2(D), BLOCK_M rows per
tile, all statistics in fp32.

forward : y = x * s * r,  r = rsqrt(mean((x - b)^2)), s = exp(log_scale); writes y and r (fp32/row).
backward: with c = sum_j g_j x_j per row,
    dx   = s r (g - r^2 c (x - b) / D)
    db   = sum_rows s r^3 c (x - b) / D
    dlog = sum_rows s r c
  db / dlog are reduced without atomics: P programs each own a contiguous range of rows and write
  one partial row (P, D) / (P,); the caller sums the partials.
"""
import torch
import triton
import triton.language as tl

from ._common import configs, reduction_programs

_FWD_CONFIGS = configs(
    [triton.Config({"BLOCK_M": bm}, num_warps=w) for bm, w in ((1, 4), (4, 4), (8, 8), (16, 8))],
    triton.Config({"BLOCK_M": 64}, num_warps=4),
)
_BWD_CONFIGS = configs(
    [triton.Config({"BLOCK_M": bm}, num_warps=w) for bm, w in ((1, 4), (2, 4), (4, 8), (8, 8))],
    triton.Config({"BLOCK_M": 32}, num_warps=4),
)


@triton.autotune(configs=_FWD_CONFIGS, key=["BLOCK_D"])
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


@triton.autotune(configs=_BWD_CONFIGS, key=["BLOCK_D"])
@triton.jit
def bias_norm_bwd_kernel(g_ptr, x_ptr, b_ptr, ls_ptr, r_ptr, dx_ptr, db_part_ptr, dls_part_ptr,
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
    tl.store(db_part_ptr + pid * D + cols, db_acc, mask=cmask)
    tl.store(dls_part_ptr + pid, tl.sum(dls_acc, axis=0))


def forward(x2, bias, log_scale, y2, rstd) -> None:
    """x2 (N, D) with unit column stride; y2 (N, D) contiguous; rstd (N,) fp32."""
    n, d = x2.shape
    block_d = triton.next_power_of_2(d)
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]),)
    bias_norm_fwd_kernel[grid](x2, bias, log_scale, y2, rstd, n, d, x2.stride(0), BLOCK_D=block_d)


def backward(g2, x2, bias, log_scale, rstd, dx2):
    """Writes dx2; returns fp32 (dbias (D,), dlog_scale ()) summed over the per-program partials."""
    n, d = x2.shape
    progs = reduction_programs(n, x2.device)
    rows_per_prog = triton.cdiv(n, progs)
    db_part = x2.new_empty((progs, d), dtype=torch.float32)
    dls_part = x2.new_empty((progs,), dtype=torch.float32)
    bias_norm_bwd_kernel[(progs,)](g2, x2, bias, log_scale, rstd, dx2, db_part, dls_part, n, d,
                                   rows_per_prog, x2.stride(0), BLOCK_D=triton.next_power_of_2(d))
    return db_part.sum(0), dls_part.sum()


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        p = {"b_ptr": "fp32", "ls_ptr": "fp32", "r_ptr": "fp32", "db_part_ptr": "fp32", "dls_part_ptr": "fp32"}
        out.append(spec(bias_norm_fwd_kernel, {"BLOCK_M": 8, "BLOCK_D": 512}, p, dt, num_warps=4))
        out.append(spec(bias_norm_bwd_kernel, {"BLOCK_M": 4, "BLOCK_D": 512}, p, dt, num_warps=8))
    return out
