"""Fused Zipformer attention (shared-weight, relative-position, linear memory): entry points and
the ahead-of-time compile list.

The kernels live in attention_common.py (score tile, skew), attention_fwd.py (statistics,
materialised weights, apply), attention_bwd.py (dq/dp/dpos, dk/dv) and the autograd wiring in
attention_autograd.py; zipformer_fast.ops.attention dispatches to them.

`aot_specs` (used by tests/aot_compile.py) lists the variants compiled for sm_80 / sm_90 on CI:
every kernel with all masks and the positional term on (fp16 self-attention shapes), plus bf16
non-linear-attention shapes (one head of value width 576, tiled by 64), constant attention and the
materialised-weight backward. fp32 (IEEE dots) compiles too but slowly (up to ~90 s per kernel);
all variants were compiled once with the full list, and fp32 numerics are covered by the
interpreter tests and the GPU runs.
"""
from .attention_autograd import AttentionHandle, apply_handle, attention_handle, materialized_weights
from .attention_bwd import _bwd_dkdv_kernel, _bwd_dq_kernel, attention_bwd
from .attention_fwd import _apply_fwd_kernel, _stats_kernel, attention_apply_fwd, attention_stats

__all__ = ["AttentionHandle", "materialized_weights", "apply_handle", "attention_handle",
           "attention_bwd", "attention_apply_fwd", "attention_stats", "aot_specs"]

_GPU_TILE = dict(BM=64, BN=64, NW=128)

_FP32_BUFFERS = ("lse_ptr", "delta_ptr", "cnt_ptr", "dpos_ptr")


def _ptr_dtypes(kernel, dtype):
    from triton.runtime.jit import JITFunction

    fn = kernel
    while not isinstance(fn, JITFunction):
        fn = fn.fn
    out = {}
    for name in fn.arg_names:
        if not name.endswith("_ptr"):
            continue
        if name in ("kpm_ptr", "am_ptr"):
            out[name] = "u8"
        elif name in _FP32_BUFFERS:
            out[name] = "fp32"
        else:
            out[name] = dtype
    return out


def aot_specs(spec, dtypes):
    """KernelSpecs for tests/aot_compile.py (see the module docstring for the choice)."""
    specs = []
    masks = dict(HAS_POS=True, HAS_KPM=True, HAS_AM=True)
    heads = dict(DQ=32, DP=4, BDQ=32, BDP=16, **_GPU_TILE)

    def add(kernel, dtype, tag, **constexprs):
        prec = "tf32" if dtype != "fp32" else "ieee"
        cx = dict(masks, **heads, PREC=prec, **constexprs)
        specs.append(spec(kernel, cx, ptr_dtypes=_ptr_dtypes(kernel, dtype), default=dtype,
                          tag=f"{dtype},{tag}", num_warps=4, num_stages=2))

    sa = dict(DV=12, BDV=16)
    nla = dict(DV=576, BDV=64)
    # One variant per kernel and code path (compiling is slow: ~10 s each per arch on CI).
    add(_stats_kernel, "fp16", "weights", WRITE_W=True)
    add(_apply_fwd_kernel, "fp16", "sa", CONST=False, **sa)
    add(_bwd_dq_kernel, "fp16", "sa", LOAD_DP=False, PENALIZE=True, **sa)
    add(_bwd_dkdv_kernel, "fp16", "sa", LOAD_DP=False, PENALIZE=True, CONST=False, COMPUTE_DK=True,
        COMPUTE_DV=True, **sa)
    add(_apply_fwd_kernel, "bf16", "nla_const", CONST=True, **nla)
    add(_bwd_dq_kernel, "bf16", "materialized", LOAD_DP=True, PENALIZE=True, DV=1, BDV=16)
    add(_bwd_dkdv_kernel, "bf16", "nla_const_dv", LOAD_DP=False, PENALIZE=False, CONST=True,
        COMPUTE_DK=False, COMPUTE_DV=True, **nla)
    return specs
