"""Triton GEMMs for activation -> shared dropout -> linear (ops/activation_linear.py), and for
linear -> activation (the first half of a feed-forward module, inference).

x is (M, K) with a unit column stride, W is (N, K) (nn.Linear layout), mask is (mask_rows, K) and
row m of x uses mask row m % mask_rows (a (1, B, K) mask shared over time has mask_rows = B).
h = act(x) * mask is never stored: the forward computes it in the prologue of each K tile,
the weight gradient recomputes it the same way, and the input gradient applies act'(x) * mask in
the epilogue of dH = dY @ W.

Rounding follows the reference: act(x) in fp32 rounded to x's dtype, times the mask in x's
dtype, then cast to the GEMM dtype (W's dtype: the autocast dtype under autocast); fp32
accumulation everywhere. fp32 GEMMs use TF32 only when torch allows it (PRECISION constexpr).
Padded K columns are forced to 0 after the activation (swoosh(0) != 0).

dW uses split-M: SPLIT programs per (N, K) tile each reduce a contiguous range of rows into an
fp32 partial row (SPLIT, N*K [+ N]), so small weights still fill the GPU; the programs of the
first K tile also sum dY's rows (the bias gradient, last N columns). One fold launch
(_common.fold_rows) sums the partials into dW and db in the parameters' dtypes.

These GEMMs keep triton.autotune (tile shapes matter for compute-bound kernels and can only be
chosen on the device), but only the first call of a key goes through the autotuner: `_launch`
caches the chosen config per key and launches the kernel directly afterwards, so the hot path
pays no autotuner bookkeeping.
"""
import triton
import triton.language as tl

from ._common import (INTERPRET, cdiv, configs, constexpr_names, dot_precision, fold_rows, reduction_programs,
                      scratch_fp32)
from .swoosh import swoosh_deriv, swoosh_value


def _gemm_configs(shapes):
    return configs(
        [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
         for bm, bn, bk, w, s in shapes],
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 2}, num_warps=4, num_stages=1),
    )


_MN_SHAPES = [(128, 128, 64, 8, 3), (128, 128, 32, 4, 4), (128, 64, 64, 4, 4), (64, 128, 64, 4, 4)]
_FWD_CONFIGS = _gemm_configs(_MN_SHAPES)
_DX_CONFIGS = _gemm_configs(_MN_SHAPES)
_DW_CONFIGS = _gemm_configs([(64, 128, 128, 8, 3), (64, 64, 64, 4, 4), (128, 128, 64, 8, 3), (64, 128, 64, 4, 4)])


@triton.jit
def _grouped(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (tile row, tile col), GROUP_M tile rows at a time (L2 reuse of W)."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_n
    first_m = (pid // group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % group) % size_m, (pid % group) // size_m


@triton.jit
def _activation_tile(x_ptr, mask_ptr, rm, kk, valid, M_rows_mask, K, stride_xm, shift, offset,
                     HAS_MASK: tl.constexpr, out_ty: tl.constexpr):
    """h = act(x) * mask on a (rows, K-cols) tile, zero where not `valid`, cast to out_ty."""
    x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_xm + kk[None, :], mask=valid, other=0.0)
    h = swoosh_value(x.to(tl.float32), shift, offset).to(x_ptr.dtype.element_ty)
    if HAS_MASK:
        dm = tl.load(mask_ptr + (rm % M_rows_mask).to(tl.int64)[:, None] * K + kk[None, :], mask=valid, other=0.0)
        h = (h.to(tl.float32) * dm.to(tl.float32)).to(x_ptr.dtype.element_ty)
    return tl.where(valid, h, 0.0).to(out_ty)


@triton.autotune(configs=_FWD_CONFIGS, key=["N", "K", "HAS_MASK", "HAS_BIAS"])
@triton.jit
def act_linear_fwd_kernel(x_ptr, w_ptr, b_ptr, mask_ptr, y_ptr, M, N, K, mask_rows, stride_xm, shift, offset,
                          HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _grouped(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        valid = (rm < M)[:, None] & (kk < K)[None, :]
        h = _activation_tile(x_ptr, mask_ptr, rm, kk, valid, mask_rows, K, stride_xm, shift, offset,
                             HAS_MASK, w_ptr.dtype.element_ty)
        w = tl.load(w_ptr + rn.to(tl.int64)[None, :] * K + kk[:, None], mask=(rn < N)[None, :] & (kk < K)[:, None], other=0.0)
        acc = tl.dot(h, w, acc, input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    out_mask = (rm < M)[:, None] & (rn < N)[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.autotune(configs=_DX_CONFIGS, key=["N", "K", "HAS_MASK"])
@triton.jit
def act_linear_dx_kernel(g_ptr, w_ptr, x_ptr, mask_ptr, dx_ptr, M, N, K, mask_rows, stride_xm, shift,
                         HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dx = (dY @ W) * mask * act'(x); tiles are (BLOCK_M rows, BLOCK_N of K), reduction over N in BLOCK_K steps."""
    pid_m, pid_k = _grouped(tl.program_id(0), M, K, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tl.arange(0, BLOCK_K)
    rm64 = rm.to(tl.int64)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j0 in range(0, N, BLOCK_K):
        jj = j0 + rj
        g = tl.load(g_ptr + rm64[:, None] * N + jj[None, :], mask=(rm < M)[:, None] & (jj < N)[None, :], other=0.0)
        w = tl.load(w_ptr + jj.to(tl.int64)[:, None] * K + rk[None, :], mask=(jj < N)[:, None] & (rk < K)[None, :], other=0.0)
        acc = tl.dot(g.to(w_ptr.dtype.element_ty), w, acc, input_precision=PRECISION, out_dtype=tl.float32)
    valid = (rm < M)[:, None] & (rk < K)[None, :]
    x = tl.load(x_ptr + rm64[:, None] * stride_xm + rk[None, :], mask=valid, other=0.0).to(tl.float32)
    acc = acc * swoosh_deriv(x, shift)
    if HAS_MASK:
        dm = tl.load(mask_ptr + (rm % mask_rows).to(tl.int64)[:, None] * K + rk[None, :], mask=valid, other=0.0)
        acc = acc * dm.to(tl.float32)
    tl.store(dx_ptr + rm64[:, None] * K + rk[None, :], acc.to(dx_ptr.dtype.element_ty), mask=valid)


@triton.autotune(configs=_DW_CONFIGS, key=["N", "K", "HAS_MASK", "HAS_DB"])
@triton.jit
def act_linear_dw_kernel(g_ptr, x_ptr, mask_ptr, dw_part_ptr, M, N, K, mask_rows, stride_xm, m_per_split,
                         shift, offset, HAS_MASK: tl.constexpr, HAS_DB: tl.constexpr, PRECISION: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """dW partial[s] = dY[rows of s]^T @ (act(x) * mask)[rows of s]; tile (BLOCK_N, BLOCK_K), steps of BLOCK_M rows."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    start = pid_s * m_per_split
    end = tl.minimum(start + m_per_split, M)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for m0 in range(start, end, BLOCK_M):
        rm = m0 + tl.arange(0, BLOCK_M)
        mm = rm < end
        gt = tl.load(g_ptr + rm.to(tl.int64)[None, :] * N + rn[:, None], mask=mm[None, :] & (rn < N)[:, None], other=0.0)
        valid = mm[:, None] & (rk < K)[None, :]
        h = _activation_tile(x_ptr, mask_ptr, rm, rk, valid, mask_rows, K, stride_xm, shift, offset,
                             HAS_MASK, g_ptr.dtype.element_ty)
        acc = tl.dot(gt, h, acc, input_precision=PRECISION, out_dtype=tl.float32)
        if HAS_DB:
            db += tl.sum(gt.to(tl.float32), axis=1)
    row = dw_part_ptr + pid_s.to(tl.int64) * (N * K)
    if HAS_DB:
        row = dw_part_ptr + pid_s.to(tl.int64) * (N * K + N)
    tl.store(row + rn.to(tl.int64)[:, None] * K + rk[None, :], acc, mask=(rn < N)[:, None] & (rk < K)[None, :])
    if HAS_DB:
        tl.store(row + N * K + rn, db, mask=(rn < N) & (pid_k == 0))


@triton.autotune(configs=_FWD_CONFIGS, key=["N", "K", "HAS_BIAS"])
@triton.jit
def linear_act_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, shift, offset,
                          HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """y = act(x @ W^T + b): the pre-activation is rounded to y's dtype first, as the reference
    (linear output, then swoosh in fp32) does."""
    pid_m, pid_n = _grouped(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(x_ptr + rm.to(tl.int64)[:, None] * stride_xm + kk[None, :], mask=(rm < M)[:, None] & (kk < K)[None, :], other=0.0)
        w = tl.load(w_ptr + rn.to(tl.int64)[None, :] * K + kk[:, None], mask=(rn < N)[None, :] & (kk < K)[:, None], other=0.0)
        acc = tl.dot(a.to(w_ptr.dtype.element_ty), w, acc, input_precision=PRECISION, out_dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    z = acc.to(y_ptr.dtype.element_ty).to(tl.float32)
    y = swoosh_value(z, shift, offset)
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * N + rn[None, :], y.to(y_ptr.dtype.element_ty),
             mask=(rm < M)[:, None] & (rn < N)[None, :])


# --------------------------------------------------------------------------------- launchers
_CHOSEN = {}  # (kernel, key) -> (meta, constexprs in signature order, num_warps / num_stages): the autotuner's pick


def _launch(kernel, key, grid, args, constexprs):
    """kernel[grid(meta)](*args, **meta), through the autotuner only on a key's first call; later
    calls launch the kernel itself with the chosen config, its constexprs passed positionally in
    the signature's order (the key fixes every constexpr; see _common's module docstring)."""
    chosen = _CHOSEN.get((kernel, key))
    if chosen is None:
        kernel[grid](*args, **constexprs)
        cfg = kernel.best_config
        meta = dict(cfg.kwargs, **constexprs)
        tail = tuple(meta[name] for name in constexpr_names(kernel))
        _CHOSEN[(kernel, key)] = (meta, tail, {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
        return
    meta, tail, options = chosen
    kernel.fn.run(*args, *tail, grid=grid(meta), warmup=False, **options)


def _mn_grid(M, N):
    return lambda meta: (cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),)


def _launch_mn(kernel, key, M: int, N: int, args, constexprs) -> None:
    """_launch for the kernels whose grid is one program per (BLOCK_M x BLOCK_N) output tile:
    after a key's first call, the tile sizes come with the chosen config and the grid is computed
    here (no closure, no constexpr dict per call)."""
    chosen = _CHOSEN.get((kernel, key))
    if chosen is None:
        _launch(kernel, key, _mn_grid(M, N), args, constexprs())
        return
    meta, tail, options = chosen
    kernel.fn.run(*args, *tail, grid=(cdiv(M, meta["BLOCK_M"]) * cdiv(N, meta["BLOCK_N"]),), warmup=False, **options)


def forward(x2, M: int, K: int, stride_xm: int, w, bias, mask, mask_rows: int, y, shift, offset) -> None:
    """x2: M rows of K with unit column stride and row stride stride_xm; w (N, K) contiguous in the
    GEMM dtype; mask: None or contiguous rows of K, row m of x using mask row m % mask_rows; y
    contiguous (M rows of N). Shapes come in as ints: the launcher takes no views (host time)."""
    N = w.shape[0]
    has_b, has_m, prec = bias is not None, mask is not None, dot_precision(w.dtype)
    _launch_mn(act_linear_fwd_kernel, (N, K, has_m, has_b, x2.dtype, w.dtype, prec), M, N,
               (x2, w, bias if has_b else w, mask if has_m else x2, y, M, N, K, mask_rows, stride_xm, shift, offset),
               lambda: dict(HAS_BIAS=has_b, HAS_MASK=has_m, PRECISION=prec))


def backward(g, x2, M: int, K: int, stride_xm: int, w, mask, mask_rows: int, shift, offset, dx, dw, db) -> None:
    """g: M rows of N, contiguous, in w's dtype; x2 / mask as in forward. Writes each of dx (M rows
    of K, contiguous), dW (w's shape) and db (N,) that is not None, each in its own dtype; db is
    computed inside the dW pass when there is one."""
    N = w.shape[0]
    prec = dot_precision(w.dtype)
    has_m = mask is not None
    mask_arg = mask if has_m else x2
    if dx is not None:
        _launch_mn(act_linear_dx_kernel, (N, K, has_m, x2.dtype, w.dtype, prec), M, K,
                   (g, w, x2, mask_arg, dx, M, N, K, mask_rows, stride_xm, shift),
                   lambda: dict(HAS_MASK=has_m, PRECISION=prec))
    has_db = db is not None
    if dw is not None:
        tiles = cdiv(N, 64) * cdiv(K, 64)
        split = max(1, min(reduction_programs(M, x2, min_rows=256) // max(1, tiles // 4), cdiv(M, 256)))
        if INTERPRET:
            split = min(2, cdiv(M, 64))
        part = scratch_fp32(x2, split * (N * K + (N if has_db else 0)))
        args = (g, x2, mask_arg, part, M, N, K, mask_rows, stride_xm, cdiv(M, split), shift, offset)
        key = (N, K, has_m, has_db, x2.dtype, g.dtype, prec, split)
        chosen = _CHOSEN.get((act_linear_dw_kernel, key))
        if chosen is None:
            grid = lambda meta: (cdiv(N, meta["BLOCK_N"]), cdiv(K, meta["BLOCK_K"]), split)  # noqa: E731
            _launch(act_linear_dw_kernel, key, grid, args, dict(HAS_MASK=has_m, HAS_DB=has_db, PRECISION=prec))
        else:  # the key's tile sizes are known: no grid closure, no constexpr dict (host time)
            meta, tail, options = chosen
            act_linear_dw_kernel.fn.run(*args, *tail, grid=(cdiv(N, meta["BLOCK_N"]), cdiv(K, meta["BLOCK_K"]), split),
                                        warmup=False, **options)
        fold_rows(part, split, dw, db)
    elif has_db:
        db.copy_(g.reshape(-1, N).float().sum(0))


def linear_act_forward(x2, M: int, K: int, stride_xm: int, w, bias, y, shift, offset) -> None:
    N = w.shape[0]
    has_b, prec = bias is not None, dot_precision(w.dtype)
    _launch_mn(linear_act_fwd_kernel, (N, K, has_b, x2.dtype, w.dtype, prec), M, N,
               (x2, w, bias if has_b else w, y, M, N, K, stride_xm, shift, offset),
               lambda: dict(HAS_BIAS=has_b, PRECISION=prec))


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        for prec in (("ieee", "tf32") if dt == "fp32" else ("tf32",)):
            tag = f"{dt},{prec}"
            blocks = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}
            p = {"b_ptr": "fp32", "dw_part_ptr": "fp32"}
            f = ("shift", "offset")
            out.append(spec(act_linear_fwd_kernel, dict(blocks, HAS_BIAS=True, HAS_MASK=True, PRECISION=prec), p, dt,
                            floats=f, num_warps=4, tag=tag))
            out.append(spec(act_linear_dx_kernel, dict(blocks, HAS_MASK=True, PRECISION=prec), p, dt,
                            floats=("shift",), num_warps=4, tag=tag))
            out.append(spec(act_linear_dw_kernel, dict(blocks, BLOCK_M=32, HAS_MASK=True, HAS_DB=True, PRECISION=prec),
                            p, dt, floats=f, num_warps=4, tag=tag))
            out.append(spec(linear_act_fwd_kernel, dict(blocks, HAS_BIAS=True, PRECISION=prec), p, dt,
                            floats=f, num_warps=4, tag=tag))
    return out
