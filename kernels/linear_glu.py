"""Triton GEMM for the convolution module's front at inference: u = mask(x * sigmoid(s)) where
(x, s) = linear(src).chunk(2), one launch where eager PyTorch launches the linear, the sigmoid,
the product and the padding fill.

Each program computes a (BLOCK_M, BLOCK_N) tile of both halves (weight rows n and D + n), so the
gate is applied in the epilogue. Rounding follows the composition: both halves rounded to the
output dtype (the linear's), sigmoid in fp32 rounded to it, the product rounded to it. Rows are
m = t * B + b of a (T, B, C) input; `pad` is (B, T) (nonzero = padded frame: u is 0 there).
"""
import triton
import triton.language as tl

from .activation_linear import _gemm_configs, _grouped, _launch, _mn_grid
from ._common import dot_precision

# Two accumulators per program (both halves of the projection): the tiles of activation_linear's
# forward with half the columns, so a program holds as much as there.
_GLU_CONFIGS = _gemm_configs([(128, 64, 64, 8, 3), (128, 64, 32, 4, 4), (64, 64, 64, 4, 4), (64, 64, 32, 4, 4)])


@triton.autotune(configs=_GLU_CONFIGS, key=["D", "K", "HAS_BIAS", "HAS_PAD"])
@triton.jit
def linear_glu_fwd_kernel(x_ptr, w_ptr, b_ptr, pad_ptr, u_ptr, M, D, K, B, T, stride_xm,
                          HAS_BIAS: tl.constexpr, HAS_PAD: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _grouped(tl.program_id(0), M, D, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    rm64 = rm.to(tl.int64)
    w_rows = rn.to(tl.int64)[None, :] * K
    acc_x = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_s = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(x_ptr + rm64[:, None] * stride_xm + kk[None, :], mask=(rm < M)[:, None] & (kk < K)[None, :],
                    other=0.0).to(w_ptr.dtype.element_ty)
        w_mask = (rn < D)[None, :] & (kk < K)[:, None]
        wx = tl.load(w_ptr + w_rows + kk[:, None], mask=w_mask, other=0.0)
        ws = tl.load(w_ptr + D * K + w_rows + kk[:, None], mask=w_mask, other=0.0)
        acc_x = tl.dot(a, wx, acc_x, input_precision=PRECISION, out_dtype=tl.float32)
        acc_s = tl.dot(a, ws, acc_s, input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_BIAS:
        acc_x += tl.load(b_ptr + rn, mask=rn < D, other=0.0).to(tl.float32)[None, :]
        acc_s += tl.load(b_ptr + D + rn, mask=rn < D, other=0.0).to(tl.float32)[None, :]
    out_ty = u_ptr.dtype.element_ty
    xv = acc_x.to(out_ty).to(tl.float32)
    sv = acc_s.to(out_ty).to(tl.float32)
    sig = (1.0 / (1.0 + tl.exp(-sv))).to(out_ty).to(tl.float32)
    u = xv * sig
    if HAS_PAD:
        padded = tl.load(pad_ptr + (rm64 % B) * T + rm64 // B, mask=rm < M, other=0)
        u = tl.where((padded != 0)[:, None], 0.0, u)
    tl.store(u_ptr + rm64[:, None] * D + rn[None, :], u.to(out_ty), mask=(rm < M)[:, None] & (rn < D)[None, :])


def forward(x2, w, bias, pad, u, B: int, T: int) -> None:
    """x2 (M = T*B, K) unit column stride, in any float dtype (cast to W's in the prologue);
    w (2D, K) contiguous in the GEMM dtype; pad (B, T) uint8/bool contiguous or None; u (M, D)."""
    M, K = x2.shape
    D = w.shape[0] // 2
    has_b, has_p, prec = bias is not None, pad is not None, dot_precision(w.dtype)
    _launch(linear_glu_fwd_kernel, (D, K, has_b, has_p, x2.dtype, w.dtype, prec), _mn_grid(M, D),
            (x2, w, bias if has_b else w, pad if has_p else x2, u, M, D, K, B, T, x2.stride(0)),
            dict(HAS_BIAS=has_b, HAS_PAD=has_p, PRECISION=prec))


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        for prec in (("ieee", "tf32") if dt == "fp32" else ("tf32",)):
            blocks = {"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8}
            out.append(spec(linear_glu_fwd_kernel, dict(blocks, HAS_BIAS=True, HAS_PAD=True, PRECISION=prec),
                            {"b_ptr": "fp32", "pad_ptr": "u8"}, dt, num_warps=4, tag=f"{dt},{prec}",
                            not_divisible=("M", "B", "T")))
    return out
