"""Fused Zipformer attention (shared-weight, relative-position, linear memory): the kernels' entry
points and the ahead-of-time compile list.

The kernels live in attention_common.py (score tile, softmax pieces, offset skew), attention_fwd.py
(online-softmax first use, later uses, materialised weights) and attention_bwd.py (one-pass
backward of a use, row dots); their autograd wiring is zipformer_fast/ops/attention_fused.py, and
zipformer_fast.ops.attention dispatches to it.

`aot_specs` (used by tests/aot_compile.py and bench/ptxas_report.py) lists the variants compiled
for sm_80 / sm_90: every launch configuration the launchers use for Zipformer shapes (fp16/bf16,
all masks and the positional term on, divisibility-16 specialisation of the integer arguments as a
real launch gets it): the statistics-only first pass, the first use online with its output
(self-attention width 12 and non-linear attention widths 144..384), a later use, constant
attention, materialised weights, and the backward of a self-attention use, of a non-linear
attention use (one walk; for padded widths above 256 that variant is sm_90 only and sm_80 runs
its two walks), of constant attention and of the materialised weights. Block sizes and warps are
the launchers' own (fwd_blocks / bwd_blocks), so the register counts are those of real launches.
"""
from .attention_bwd import (ONE_WALK_MAX_BDV, _bwd_kernel, _row_dot_kernel, attention_bwd, bwd_blocks, dp_chunk,
                            offset_piece, row_dot)
from .attention_common import pow2_at_least_16
from .attention_fwd import _fwd_kernel, attention_apply_fwd, attention_weights_fwd, fwd_blocks

__all__ = ["attention_bwd", "attention_apply_fwd", "attention_weights_fwd", "row_dot", "aot_specs"]

_FP32_BUFFERS = ("stats_ptr", "delta_ptr", "cnt_ptr", "dq_ptr", "dp_ptr", "dpos_ptr", "out_ptr")
# Integer arguments a real launch sees as multiples of 16: strides of Zipformer's (T, B, H*d)
# projections and the padded mask rows (T, B, H are not, so they are not declared divisible).
_DIV16 = ("sq_t", "sq_b", "sk_t", "sk_b", "sv_h", "sv_b", "sv_t", "s_am")

# Zipformer-M: query head 32, pos head 4, value head 12; NLA width 3D/4 for D = 192 .. 512.
SA_DV = 12
NLA_DV = (144, 192, 288, 384)


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
    head = dict(DQ=32, DP=4, BDQ=32)

    def add(kernel, dtype, tag, blocks, **constexprs):
        cx = dict(masks, **head, PREC="tf32", **constexprs)
        cx.update(BM=blocks["BM"], BN=blocks["BN"])
        s = spec(kernel, cx, ptr_dtypes=_ptr_dtypes(kernel, dtype), default=dtype,
                 tag=f"{dtype},{tag}", num_warps=blocks["num_warps"], num_stages=blocks["num_stages"])
        s.maxnreg = blocks.get("maxnreg")
        # pointers and these strides are multiples of 16 in a real launch (tt.divisibility)
        s.divisible16 = [n for n in s.signature if n.endswith("_ptr") or n in _DIV16]
        specs.append(s)

    def fwd(dtype, tag, dv, **flags):
        bdv = pow2_at_least_16(dv) if dv else 16
        add(_fwd_kernel, dtype, tag, fwd_blocks(bdv if dv else 0), DV=max(dv, 1), BDV=bdv, **flags)

    def bwd(dtype, tag, dv, archs=None, **flags):
        bdv = pow2_at_least_16(dv)
        blocks = bwd_blocks(bdv)
        add(_bwd_kernel, dtype, tag, blocks, DV=dv, BDV=bdv, BDP=16, NW=offset_piece(blocks), DPC=dp_chunk(bdv),
            **flags)
        specs[-1].archs = archs

    off = dict(CONST=False, WRITE_W=False)
    fwd("fp16", "stats_only", 0, ONLINE=True, HAS_V=False, **off)
    fwd("fp16", "first_sa", SA_DV, ONLINE=True, HAS_V=True, **off)
    fwd("fp16", "later_sa", SA_DV, ONLINE=False, HAS_V=True, **off)
    for dv in NLA_DV:
        fwd("bf16", f"first_nla{dv}", dv, ONLINE=True, HAS_V=True, **off)
    fwd("bf16", "const_nla144", NLA_DV[0], ONLINE=False, HAS_V=True, CONST=True, WRITE_W=False)
    fwd("fp16", "weights", 0, ONLINE=True, HAS_V=False, CONST=False, WRITE_W=True)
    grads = dict(LOAD_DP=False, PENALIZE=True, CONST=False, COMPUTE_DS=True, COMPUTE_DV=True)
    bwd("fp16", "sa", SA_DV, **grads)
    for dv in NLA_DV:  # one walk; above ONE_WALK_MAX_BDV on sm_90 only, sm_80 walks twice
        wide = pow2_at_least_16(dv) > ONE_WALK_MAX_BDV
        bwd("bf16", f"nla{dv}", dv, archs=(90,) if wide else None, **dict(grads, PENALIZE=False))
        if wide:
            bwd("bf16", f"nla{dv}_ds", dv, archs=(80,), **dict(grads, PENALIZE=False, COMPUTE_DV=False))
            bwd("bf16", f"nla{dv}_dv", dv, archs=(80,), **dict(grads, PENALIZE=False, COMPUTE_DS=False))
    bwd("bf16", "const_nla144", NLA_DV[0], **dict(grads, CONST=True, COMPUTE_DS=False))
    bwd("fp16", "materialized", 1, **dict(grads, LOAD_DP=True, COMPUTE_DV=False))
    specs.append(spec(_row_dot_kernel, dict(BR=32, BC=128), ptr_dtypes=dict(out_ptr="fp32"),
                      default="bf16", tag="bf16"))
    return specs
