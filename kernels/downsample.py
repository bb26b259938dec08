"""Triton kernels for SimpleDownsample (formula: zipformer_fast/ops/downsample.py).

x is (T, B, C) with a unit channel stride (T/B strides free, so a channel-truncation view between
stacks is read in place); out is (Tg, B, C), Tg = ceil(T/ds), contiguous. Frame index
t = tg*ds + k is clamped to T-1: that is the reference's padding by repeating the last frame.
w = softmax(bias) (ds floats) is computed by the caller, plus its suffix sums wsuf[k] = sum_{j>=k} w_j.

forward : out[tg] = sum_k w_k x[min(tg*ds + k, T-1)]                    (one read of x, one write)
backward: dx[t] = g[t // ds] * w[t % ds], except the last frame T-1, which also collects the
          padded positions: g[Tg-1] * wsuf[(T-1) % ds].
          dw_k = sum_{tg, n} g[tg, n] x[min(tg*ds + k, T-1), n], per-program partials (no atomics);
          the caller applies the softmax Jacobian to get dbias (ds numbers).
"""
import torch
import triton
import triton.language as tl

from ._common import configs, reduction_programs

_FWD_CONFIGS = configs(
    [triton.Config({"BLOCK_G": bg, "BLOCK_N": bn}, num_warps=w)
     for bg, bn, w in ((1, 1024, 4), (2, 512, 4), (4, 256, 4), (2, 1024, 8))],
    triton.Config({"BLOCK_G": 16, "BLOCK_N": 256}, num_warps=4),
)
_BWD_CONFIGS = configs(
    [triton.Config({"BLOCK_G": bg}, num_warps=w) for bg, w in ((1, 4), (2, 4), (2, 8), (4, 8))],
    triton.Config({"BLOCK_G": 8}, num_warps=4),
)


@triton.autotune(configs=_FWD_CONFIGS, key=["C", "DS"])
@triton.jit
def downsample_fwd_kernel(x_ptr, w_ptr, out_ptr, T, Tg, B, C, sx_t, sx_b,
                          DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    tg = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < B * C
    b = n // C
    ox = b.to(tl.int64) * sx_b + (n - b * C)
    m = (tg < Tg)[:, None] & nmask[None, :]
    acc = tl.zeros((BLOCK_G, BLOCK_N), dtype=tl.float32)
    for k in tl.static_range(DS):
        t = tl.minimum(tg * DS + k, T - 1)
        x = tl.load(x_ptr + t.to(tl.int64)[:, None] * sx_t + ox[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.load(w_ptr + k) * x
    tl.store(out_ptr + tg.to(tl.int64)[:, None] * (B * C) + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=m)


@triton.autotune(configs=_BWD_CONFIGS, key=["C", "DS", "BLOCK_N"])
@triton.jit
def downsample_bwd_kernel(g_ptr, x_ptr, w_ptr, wsuf_ptr, dx_ptr, dw_part_ptr,
                          T, Tg, B, C, g_per_prog, sx_t, sx_b,
                          DS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid (P, column blocks); dw_part is (P, column blocks, DS).

    A tile is BLOCK_G whole groups = BLOCK_G*DS frames; the gradient row g[t // DS] is gathered
    once per frame (the DS repeats of a row hit L1), so x and g are each read from memory once.
    Tiles start at a multiple of DS, so tile row r always has k = r % DS.
    """
    pid = tl.program_id(0)
    pn = tl.program_id(1)
    n = pn * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < B * C
    b = n // C
    ox = b.to(tl.int64) * sx_b + (n - b * C)
    r = tl.arange(0, BLOCK_G * DS)
    k = r % DS
    wk = tl.load(w_ptr + k)
    wlast = tl.load(wsuf_ptr + k)
    start = pid * g_per_prog
    end = tl.minimum(start + g_per_prog, Tg)
    acc = tl.zeros((BLOCK_G * DS, BLOCK_N), dtype=tl.float32)
    for g0 in range(start, end, BLOCK_G):
        t = g0 * DS + r
        tg = t // DS
        m = (tg < end)[:, None] & nmask[None, :]
        g = tl.load(g_ptr + tg.to(tl.int64)[:, None] * (B * C) + n[None, :], mask=m, other=0.0).to(tl.float32)
        tc = tl.minimum(t, T - 1)  # frames past T-1 are the padding: copies of frame T-1
        x = tl.load(x_ptr + tc.to(tl.int64)[:, None] * sx_t + ox[None, :], mask=m, other=0.0).to(tl.float32)
        acc += g * x
        # The padding's gradient goes to frame T-1, whose weight is the suffix sum wsuf[k].
        wt = tl.where(t == T - 1, wlast, wk)
        tl.store(dx_ptr + t.to(tl.int64)[:, None] * (B * C) + n[None, :], (g * wt[:, None]).to(dx_ptr.dtype.element_ty),
                 mask=m & (t < T)[:, None])
    per_row = tl.sum(acc, axis=1)
    kk = tl.arange(0, DS)
    dw = tl.sum(tl.where(k[:, None] == kk[None, :], per_row[:, None], 0.0), axis=0)
    tl.store(dw_part_ptr + (pid * tl.num_programs(1) + pn).to(tl.int64) * DS + kk, dw)


def forward(x, w, out, ds: int) -> None:
    T, B, C = x.shape
    Tg = out.shape[0]
    grid = lambda meta: (triton.cdiv(Tg, meta["BLOCK_G"]), triton.cdiv(B * C, meta["BLOCK_N"]))
    downsample_fwd_kernel[grid](x, w, out, T, Tg, B, C, x.stride(0), x.stride(1), DS=ds)


def backward(grad, x, w, dx, ds: int):
    """Writes dx (T, B, C) contiguous; returns dw (ds,) fp32."""
    T, B, C = x.shape
    Tg = grad.shape[0]
    # Fixed (not tuned) column block: the partial buffer's size depends on it.
    block_n = max(64, 2048 // ds) if x.device.type == "cuda" else 256
    block_n = min(block_n, triton.next_power_of_2(B * C))
    n_blocks = triton.cdiv(B * C, block_n)
    progs = reduction_programs(Tg, x.device, min_rows=max(2, 16 // max(1, n_blocks)))
    if x.device.type == "cuda":  # keep the grid (progs x column blocks) around 4 waves
        progs = max(1, min(progs, triton.cdiv(4 * 132, n_blocks)))
    g_per = triton.cdiv(Tg, progs)
    wsuf = w.flip(0).cumsum(0).flip(0).contiguous()
    dw_part = torch.empty((progs, n_blocks, ds), dtype=torch.float32, device=x.device)
    downsample_bwd_kernel[(progs, n_blocks)](grad, x, w, wsuf, dx, dw_part, T, Tg, B, C, g_per,
                                             x.stride(0), x.stride(1), DS=ds, BLOCK_N=block_n)
    return dw_part.sum((0, 1))


def aot_specs(spec, dtypes):
    out = []
    for dt in dtypes:
        p = {"w_ptr": "fp32", "wsuf_ptr": "fp32", "dw_part_ptr": "fp32"}
        out.append(spec(downsample_fwd_kernel, {"DS": 2, "BLOCK_G": 2, "BLOCK_N": 512}, p, dt, num_warps=4))
        out.append(spec(downsample_bwd_kernel, {"DS": 8, "BLOCK_G": 2, "BLOCK_N": 256}, p, dt, num_warps=8))
        out.append(spec(downsample_bwd_kernel, {"DS": 2, "BLOCK_G": 4, "BLOCK_N": 1024}, p, dt, num_warps=8,
                        tag=dt + ",ds2"))
    return out
