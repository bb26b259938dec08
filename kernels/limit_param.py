"""Triton kernel for limit_param_value's backward (zipformer_fast/nn/grad_shapers.py): one launch
where the composition makes seven (comparisons, logical ands, two sign flips).

icefall's LimitParamValue flips a gradient that would push the parameter further outside
[lo, hi]: first where grad > 0 and x < lo, then where the result < 0 and x > hi. With lo <= hi the
second can never undo the first, so one combined flip is the same function.
"""
import triton
import triton.language as tl

from ._common import cdiv, constexpr_order

BLOCK = 1024


@triton.jit
def limit_param_bwd_kernel(x_ptr, g_ptr, out_ptr, n, lo, hi, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=m, other=0.0)
    flip = ((g > 0) & (x < lo)) | ((g < 0) & (x > hi))
    tl.store(out_ptr + offs, tl.where(flip, -g, g), mask=m)


constexpr_order(limit_param_bwd_kernel, "BLOCK")  # the launcher passes it positionally


def backward(x, g, out, lo: float, hi: float) -> None:
    """x, g, out contiguous with the same number of elements."""
    n = g.numel()
    limit_param_bwd_kernel.run(x, g, out, n, lo, hi, BLOCK, grid=(cdiv(n, BLOCK),), warmup=False)


def aot_specs(spec, dtypes):
    return [spec(limit_param_bwd_kernel, dict(BLOCK=BLOCK), {}, dt, floats=("lo", "hi"), num_warps=4, tag=dt,
                 not_divisible=("n",)) for dt in dtypes]
