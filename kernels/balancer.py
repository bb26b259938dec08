"""Triton kernels for the Balancer's gradient edit (zipformer_fast/ops/balancer.py): three launches
where autograd of the constraint loss launches about ninety.

The constraint loss of a channel depends on x only through its mean and mean square, so its
gradient is affine per channel: dL/dx = c0_c + B_c (x - mean_c), whose RMS over the channel is
sqrt(c0_c^2 + B_c^2 var_c). Hence

    stats:  per-program partial sums of (x - K_c) and (x - K_c)^2, K_c = the channel's first value
            (shifted sums: the variance of a nearly constant channel keeps its digits)  (P, 2, C)
    coef:   fold the partials; mean, variance, c0 and B by the chain rule autograd applies to the
            reference's formulas (clamps pass the gradient on their closed range, the sign of the
            excess gives +-1 or 0), scaled by grad_scale / RMS; stored with the mean    (3, C)
    apply:  edited = grad + |grad| * (c0_c + B_c (x - mean_c)), in fp32, stored in grad's dtype.

The centred form is better conditioned than autograd's A + B x (whose two terms nearly cancel on
a channel with |mean| >> std), so on such channels the edit differs from the reference by the
reference's own round-off.

x is viewed as (outer, C, inner): channel last (inner = 1) is a (rows, C) matrix; otherwise rows
of length `inner`, row r holding channel r % C (the convolution module's (B, D, T) gate, Conv-Embed's
(B, C, T, F) maps).
"""
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, constexpr_order, reduction_programs, scratch_fp32

EPS = tl.constexpr(1.0e-20)


@triton.jit
def balancer_stats_kernel(x_ptr, part_ptr, N, C, inner, rows_per_prog, CHANNEL_LAST: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channel last: program (p, cb) sums rows [p * rows_per_prog, ...) of an (N, C) matrix.
    Rows: program (o, cb) sums its C-block's rows o * C + c over their `inner` elements."""
    p = tl.program_id(0)
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = cs < C
    s1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    s2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    if CHANNEL_LAST:
        shift = tl.load(x_ptr + cs, mask=in_c, other=0.0).to(tl.float32)[None, :]
        start = p * rows_per_prog
        end = tl.minimum(start + rows_per_prog, N)
        for r0 in range(start, end, BLOCK_R):
            rs = r0 + tl.arange(0, BLOCK_R)
            m = (rs < end)[:, None] & in_c[None, :]
            x = tl.load(x_ptr + rs.to(tl.int64)[:, None] * C + cs[None, :], mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, x - shift, 0.0)
            s1 += tl.sum(d, 0)
            s2 += tl.sum(d * d, 0)
    else:
        shift = tl.load(x_ptr + cs.to(tl.int64) * inner, mask=in_c, other=0.0).to(tl.float32)[:, None]
        rows = (p * C + cs).to(tl.int64) * inner
        for i0 in range(0, inner, BLOCK_R):
            iis = i0 + tl.arange(0, BLOCK_R)
            m = in_c[:, None] & (iis < inner)[None, :]
            x = tl.load(x_ptr + rows[:, None] + iis[None, :], mask=m, other=0.0).to(tl.float32)
            d = tl.where(m, x - shift, 0.0)
            s1 += tl.sum(d, 1)
            s2 += tl.sum(d * d, 1)
    base = part_ptr + p.to(tl.int64) * 2 * C
    tl.store(base + cs, s1, mask=in_c)
    tl.store(base + C + cs, s2, mask=in_c)


@triton.jit
def _sign(v):
    return tl.where(v > 0.0, 1.0, tl.where(v < 0.0, -1.0, 0.0))


@triton.jit
def balancer_coef_kernel(x_ptr, part_ptr, coef_ptr, P, C, inner, count, min_mean, max_mean, min_rms, max_rms,
                         grad_scale, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    cs = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = cs < C
    shift = tl.load(x_ptr + cs.to(tl.int64) * inner, mask=in_c, other=0.0).to(tl.float32)
    acc1 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.float32)
    for p0 in range(0, P, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        m = (ps < P)[:, None] & in_c[None, :]
        off = ps.to(tl.int64)[:, None] * 2 * C + cs[None, :]
        acc1 += tl.load(part_ptr + off, mask=m, other=0.0)
        acc2 += tl.load(part_ptr + off + C, mask=m, other=0.0)
    d1 = tl.sum(acc1, 0) / count
    var = tl.maximum(tl.sum(acc2, 0) / count - d1 * d1, 0.0)
    mean = shift + d1
    uv = var + mean * mean                                 # uncentered variance
    sd = tl.sqrt(tl.maximum(var, EPS))
    rms = tl.sqrt(tl.maximum(uv, EPS))
    m_ = mean / sd
    g_m = _sign(m_ - tl.minimum(tl.maximum(m_, min_mean), max_mean))           # d|m - clamp(m)| / dm
    # d|log(clamp(rms) / rms)| / d rms: 0 inside [min, max]; otherwise clamp passes no gradient
    g_rms = -_sign(tl.minimum(tl.maximum(rms, min_rms), max_rms) - rms) / rms
    g_var = g_m * (-mean / (sd * sd)) * tl.where(var >= EPS, 0.5 / sd, 0.0)
    g_r = g_rms * tl.where(uv >= EPS, 0.5 / rms, 0.0)                          # via uv only
    # dL/dx = (g_mean + 2 g_uv x) / N with g_mean = g_m / sd - 2 mean g_var, g_uv = g_var + g_r,
    # written as c0 + b (x - mean): the g_var terms cancel exactly in c0
    c0 = (g_m / sd + 2.0 * mean * g_r) / count
    b = 2.0 * (g_var + g_r) / count
    s = grad_scale / tl.maximum(tl.sqrt(c0 * c0 + b * b * var), EPS)
    tl.store(coef_ptr + cs, c0 * s, mask=in_c)
    tl.store(coef_ptr + C + cs, b * s, mask=in_c)
    tl.store(coef_ptr + 2 * C + cs, mean, mask=in_c)


@triton.jit
def balancer_apply_kernel(x_ptr, g_ptr, coef_ptr, out_ptr, N, C, inner, CHANNEL_LAST: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channel last: tile (BLOCK_R rows, BLOCK_C channels) of (N, C). Rows: tile (BLOCK_C rows of
    one outer index, BLOCK_R of their inner elements); grid axis 0 runs over outer x inner blocks."""
    cs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    in_c = cs < C
    a = tl.load(coef_ptr + cs, mask=in_c, other=0.0)
    b = tl.load(coef_ptr + C + cs, mask=in_c, other=0.0)
    mu = tl.load(coef_ptr + 2 * C + cs, mask=in_c, other=0.0)
    if CHANNEL_LAST:
        rs = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = (rs < N)[:, None] & in_c[None, :]
        off = rs.to(tl.int64)[:, None] * C + cs[None, :]
        a2, b2, mu2 = a[None, :], b[None, :], mu[None, :]
    else:
        n_i = tl.cdiv(inner, BLOCK_R)
        o = tl.program_id(0) // n_i
        iis = (tl.program_id(0) % n_i) * BLOCK_R + tl.arange(0, BLOCK_R)
        m = in_c[:, None] & (iis < inner)[None, :]
        off = (o * C + cs).to(tl.int64)[:, None] * inner + iis[None, :]
        a2, b2, mu2 = a[:, None], b[:, None], mu[:, None]
    x = tl.load(x_ptr + off, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + off, mask=m, other=0.0)
    gf = g.to(tl.float32)
    tl.store(out_ptr + off, (gf + tl.abs(gf) * (a2 + b2 * (x - mu2))).to(g.dtype), mask=m)


STATS_ROWS, STATS_C, COEF_P, COEF_C = 32, 64, 32, 64
APPLY_R, APPLY_C = 32, 64
if INTERPRET:
    STATS_ROWS, STATS_C, COEF_P, COEF_C, APPLY_R, APPLY_C = 8, 16, 4, 16, 8, 16


constexpr_order(balancer_stats_kernel, "CHANNEL_LAST", "BLOCK_R", "BLOCK_C")  # the launcher passes them positionally
constexpr_order(balancer_coef_kernel, "BLOCK_P", "BLOCK_C")
constexpr_order(balancer_apply_kernel, "CHANNEL_LAST", "BLOCK_R", "BLOCK_C")


def gradient(x, g, out, outer: int, C: int, inner: int, min_mean: float, max_mean: float, min_rms: float,
             max_rms: float, grad_scale: float) -> None:
    """x, g, out contiguous with the same (outer, C, inner) layout; out gets the edited gradient.
    Per-program statistics and the per-channel coefficients live in scratch (_common.scratch_fp32)."""
    channel_last = inner == 1
    n_rows = outer * inner
    if channel_last:
        progs = reduction_programs(n_rows, x, min_rows=64)
        rows_per = cdiv(n_rows, progs)
    else:
        progs, rows_per = outer, 0
    part = scratch_fp32(x, progs * 2 * C)
    coef = scratch_fp32(x, 3 * C, slot=1)
    c_blocks = cdiv(C, STATS_C)
    balancer_stats_kernel.run(x, part, n_rows, C, inner, rows_per, channel_last, STATS_ROWS, STATS_C,
                              grid=(progs, c_blocks), warmup=False)
    balancer_coef_kernel.run(x, part, coef, progs, C, inner, float(n_rows), min_mean, max_mean, min_rms, max_rms,
                             grad_scale, COEF_P, COEF_C, grid=(cdiv(C, COEF_C),), warmup=False)
    grid0 = cdiv(n_rows, APPLY_R) if channel_last else outer * cdiv(inner, APPLY_R)
    balancer_apply_kernel.run(x, g, coef, out, n_rows, C, inner, channel_last, APPLY_R, APPLY_C,
                              grid=(grid0, cdiv(C, APPLY_C)), warmup=False)


def aot_specs(spec, dtypes):
    floats = ("count", "min_mean", "max_mean", "min_rms", "max_rms", "grad_scale")
    out = []
    for dt in dtypes:
        out.append(spec(balancer_coef_kernel, dict(BLOCK_P=32, BLOCK_C=64), {"part_ptr": "fp32", "coef_ptr": "fp32"},
                        dt, floats=floats, num_warps=4, tag=dt, not_divisible=("P", "C", "inner")))
        for last in (True, False):
            blocks = dict(BLOCK_R=32, BLOCK_C=64, CHANNEL_LAST=last)
            out.append(spec(balancer_stats_kernel, blocks, {"part_ptr": "fp32"}, dt, num_warps=4,
                            tag=f"{dt},last={last}", not_divisible=("N", "inner", "rows_per_prog")))
            out.append(spec(balancer_apply_kernel, blocks, {"coef_ptr": "fp32"}, dt, num_warps=4,
                            tag=f"{dt},last={last}", not_divisible=("N", "inner")))
    return out
