"""Triton GEMM for the end of a residual branch at inference: y = residual + linear(pre(x)), one
launch where eager PyTorch launches the linear (or the fused activation-linear) and then the add.

pre(x) is x, swoosh(x) (the convolution module's SwooshR + out_proj) or x * m (non-linear
attention's x * y before out_proj), computed in the prologue of each K tile as
activation_linear.py does: act(x) in fp32 rounded to x's dtype, times m in fp32 rounded to x's
dtype, cast to the GEMM dtype (W's). The epilogue rounds x @ W^T + b to W's dtype first (what the
linear alone returns), then adds the residual in fp32 and stores in y's dtype (torch's promotion
of the two: fp32 when an fp32 residual stream meets an autocast bf16 linear).

x rows may be two-level strided, row m at (m // x_inner) * sx_outer + (m % x_inner) * sx_inner,
so a (T, B, K) view of a (B, T, K) tensor (an attention output) is read without a copy; m rows
are strided (a chunk of a wider projection); residual and y are contiguous (M, N).
"""
import triton
import triton.language as tl

from .activation_linear import _FWD_CONFIGS, _grouped, _launch, _mn_grid
from ._common import dot_precision
from .swoosh import swoosh_value


@triton.autotune(configs=_FWD_CONFIGS, key=["N", "K", "ACT", "HAS_MUL", "HAS_BIAS"])
@triton.jit
def residual_linear_fwd_kernel(x_ptr, m_ptr, w_ptr, b_ptr, r_ptr, y_ptr, M, N, K, x_inner, sx_outer, sx_inner,
                               m_rows, s_m, shift, offset, ACT: tl.constexpr, HAS_MUL: tl.constexpr,
                               HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _grouped(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rm64 = rm.to(tl.int64)
    x_rows = (rm64 // x_inner) * sx_outer + (rm64 % x_inner) * sx_inner
    m_rows_off = (rm64 % m_rows) * s_m
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        valid = (rm < M)[:, None] & (kk < K)[None, :]
        h = tl.load(x_ptr + x_rows[:, None] + kk[None, :], mask=valid, other=0.0)
        if ACT:
            h = swoosh_value(h.to(tl.float32), shift, offset).to(x_ptr.dtype.element_ty)
        if HAS_MUL:
            mv = tl.load(m_ptr + m_rows_off[:, None] + kk[None, :], mask=valid, other=0.0)
            h = (h.to(tl.float32) * mv.to(tl.float32)).to(x_ptr.dtype.element_ty)
        h = tl.where(valid, h, 0.0).to(w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn.to(tl.int64)[None, :] * K + kk[:, None], mask=(rn < N)[None, :] & (kk < K)[:, None],
                    other=0.0)
        acc = tl.dot(h, w, acc, input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (rm < M)[:, None] & (rn < N)[None, :]
    out_off = rm64[:, None] * N + rn[None, :]
    z = acc.to(w_ptr.dtype.element_ty).to(tl.float32)
    r = tl.load(r_ptr + out_off, mask=out_mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + out_off, (z + r).to(y_ptr.dtype.element_ty), mask=out_mask)


def forward(x, x_inner: int, sx_outer: int, sx_inner: int, mul2, w, bias, residual2, y, act: bool,
            shift: float, offset: float) -> None:
    """x: any tensor whose rows follow the two-level rule (K unit-stride); mul2 (rows, K) with unit
    column stride or None; w (N, K) contiguous in the GEMM dtype; residual2 and y (M, N) contiguous."""
    M, N = residual2.shape
    K = w.shape[1]
    has_b, has_m, prec = bias is not None, mul2 is not None, dot_precision(w.dtype)
    _launch(residual_linear_fwd_kernel, (N, K, act, has_m, has_b, x.dtype, w.dtype, residual2.dtype, y.dtype, prec),
            _mn_grid(M, N), (x, mul2 if has_m else x, w, bias if has_b else w, residual2, y, M, N, K,
                             x_inner, sx_outer, sx_inner, mul2.shape[0] if has_m else 1, mul2.stride(0) if has_m else 0,
                             shift, offset), dict(ACT=act, HAS_MUL=has_m, HAS_BIAS=has_b, PRECISION=prec))


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        for prec in (("ieee", "tf32") if dt == "fp32" else ("tf32",)):
            blocks = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}
            for act, mul in ((True, False), (False, True)):
                out.append(spec(residual_linear_fwd_kernel,
                                dict(blocks, ACT=act, HAS_MUL=mul, HAS_BIAS=True, PRECISION=prec),
                                {"b_ptr": "fp32"}, dt, floats=("shift", "offset"), num_warps=4,
                                tag=f"{dt},{prec},act={act},mul={mul}", not_divisible=("M", "x_inner", "m_rows")))
    return out
