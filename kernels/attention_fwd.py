"""Forward kernels of the fused Zipformer attention and their launchers.

- `attention_stats`: per-row softmax statistics of the shared weights, stats (2, B, H, T) fp32:
  [0] = row max of S*log2e, [1] = 1 / sum_j 2^(S*log2e - max) (see common.probs); optionally also writes the weights W = softmax(S) once, in
  the compute dtype, (H, B, T, T) ("materialize" mode).
- `attention_apply_fwd`: out = W[h] @ v[h] for the selected heads (all, or head 0 for non-linear
  attention), recomputing W tile by tile from q, k, p, pos and the stats (flash-attention style; nothing
  T x T is stored). `const=True` gives icefall's constant attention: uniform weights over the keys
  whose recomputed weight is > 0; the per-row count is returned for the backward.

The value dim is tiled over the third grid axis (non-linear attention has one head of width 3D/4 =
144..576). All dots accumulate in fp32; P is cast to the value dtype for P @ V as flash attention.
"""
import torch
import triton
import triton.language as tl

from .attention_common import (INTERPRET, LOG2E, load_rows, load_stats, pow2_at_least_16, probs,
                               score_tile)

# Tile sizes. GPU: 64 x 64 tiles (the pos window is then 128 wide). Interpreter: 64 by default;
# tests use 32 so that their short sequences cross tile edges (fewer, larger tiles interpret faster).
INTERPRETER_BLOCK = 64


def _blocks():
    if INTERPRET:
        return dict(BM=INTERPRETER_BLOCK, BN=INTERPRETER_BLOCK, num_warps=1, num_stages=1)
    return dict(BM=64, BN=64, num_warps=4, num_stages=2)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots as torch does them: TF32 only where torch allows it for matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def common_meta(q, k, p, pos_t, blocks):
    """Constexprs shared by every attention kernel for these inputs."""
    dq = q.shape[-1]
    dp = p.shape[-1] if pos_t is not None else 1
    return dict(
        HAS_POS=pos_t is not None, DQ=dq, DP=dp, BDQ=pow2_at_least_16(dq), BDP=pow2_at_least_16(dp),
        NW=triton.next_power_of_2(blocks["BM"] + blocks["BN"] - 1), PREC=dot_precision(q.dtype),
    )


@triton.jit
def _stats_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, lse_ptr, w_ptr,
                  T, B, H, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                  HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                  WRITE_W: tl.constexpr, DQ: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr,
                  BN: tl.constexpr, BDQ: tl.constexpr, BDP: tl.constexpr, NW: tl.constexpr,
                  PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    in_m = offs_m < T
    q, p = load_rows(q_ptr + b * sq_b + h * sq_h, p_ptr + b * sp_b + h * sp_h, offs_m, in_m,
                      sq_t, sp_t, HAS_POS, DQ, DP, BM, BDQ, BDP)
    k_base = k_ptr + b * sk_b + h * sk_h
    pos_base = pos_ptr + h * DP * (2 * T - 1)
    kpm_base = kpm_ptr + b * T
    m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BM], dtype=tl.float32)
    for n0 in range(0, T, BN):
        raw, s, keep, kt, pwin = score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0, m0,
                                            T, sk_t, HAS_POS, HAS_KPM, HAS_AM, DQ, DP, BM, BN,
                                            BDQ, BDP, NW, PREC)
        s2 = s * LOG2E
        m_new = tl.maximum(m_i, tl.max(s2, 1))
        l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(s2 - m_new[:, None]), 1)
        m_i = m_new
    il = 1.0 / l_i
    tl.store(lse_ptr + pid_bh * T + offs_m, m_i, mask=in_m)
    tl.store(lse_ptr + B * H * T + pid_bh * T + offs_m, il, mask=in_m)
    if WRITE_W:
        w_rows = w_ptr + ((h * B + b) * T + offs_m[:, None]).to(tl.int64) * T
        for n0 in range(0, T, BN):
            raw, s, keep, kt, pwin = score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0,
                                                m0, T, sk_t, HAS_POS, HAS_KPM, HAS_AM, DQ, DP, BM,
                                                BN, BDQ, BDP, NW, PREC)
            pr = probs(s, m_i, il)
            offs_n = n0 + tl.arange(0, BN)
            tl.store(w_rows + offs_n[None, :], pr.to(w_ptr.dtype.element_ty),
                     mask=in_m[:, None] & (offs_n[None, :] < T))


@triton.jit
def _apply_fwd_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, lse_ptr, v_ptr, o_ptr, cnt_ptr,
                      T, B, H, H0, HSEL, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                      sv_h, sv_b, sv_t,
                      HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                      CONST: tl.constexpr, DQ: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr,
                      BM: tl.constexpr, BN: tl.constexpr, BDQ: tl.constexpr, BDP: tl.constexpr,
                      BDV: tl.constexpr, NW: tl.constexpr, PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = pid_bh // HSEL
    hs = pid_bh % HSEL
    h = H0 + hs
    m0 = pid_m * BM
    offs_m = m0 + tl.arange(0, BM)
    in_m = offs_m < T
    q, p = load_rows(q_ptr + b * sq_b + h * sq_h, p_ptr + b * sp_b + h * sp_h, offs_m, in_m,
                      sq_t, sp_t, HAS_POS, DQ, DP, BM, BDQ, BDP)
    k_base = k_ptr + b * sk_b + h * sk_h
    pos_base = pos_ptr + h * DP * (2 * T - 1)
    kpm_base = kpm_ptr + b * T
    m2, il = load_stats(lse_ptr, (b * H + h) * T, offs_m, in_m, B * H * T)
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    v_base = v_ptr + hs * sv_h + b * sv_b
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    cnt = tl.zeros([BM], dtype=tl.float32)
    for n0 in range(0, T, BN):
        raw, s, keep, kt, pwin = score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0, m0,
                                            T, sk_t, HAS_POS, HAS_KPM, HAS_AM, DQ, DP, BM, BN,
                                            BDQ, BDP, NW, PREC)
        pr = probs(s, m2, il)
        if CONST:
            pr = tl.where(pr > 0.0, 1.0, 0.0)
            cnt += tl.sum(pr, 1)
        offs_n = n0 + tl.arange(0, BN)
        v = tl.load(v_base + offs_n[:, None] * sv_t + offs_v[None, :],
                    mask=(offs_n[:, None] < T) & (offs_v[None, :] < DV), other=0.0)
        acc += tl.dot(pr.to(v.dtype), v, input_precision=PREC, out_dtype=tl.float32)
    row = (hs * B + b) * T + offs_m
    if CONST:
        acc = acc / cnt[:, None]
        if pid_v == 0:
            tl.store(cnt_ptr + row, cnt, mask=in_m)
    tl.store(o_ptr + row[:, None].to(tl.int64) * DV + offs_v[None, :],
             acc.to(o_ptr.dtype.element_ty), mask=in_m[:, None] & (offs_v[None, :] < DV))


def qkp_strides(q, k, p):
    """(t, b, h) strides of q, k, p in (T, B, H, d) layout; the head dim must be contiguous."""
    for name, t in (("q", q), ("k", k), ("p", p)):
        if t.stride(-1) != 1:
            raise ValueError(f"attention kernel: {name} must have a contiguous last dim")
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            p.stride(0), p.stride(1), p.stride(2))


def attention_stats(q, k, p, pos_t, kpm, am, mask_flags, write_weights: bool):
    """stats (2, B, H, T) fp32 and, if asked, the weights (H, B, T, T) in q's dtype."""
    T, B, H, _ = q.shape
    blocks = _blocks()
    lse2 = torch.empty((2, B, H, T), device=q.device, dtype=torch.float32)
    w = torch.empty((H, B, T, T), device=q.device, dtype=q.dtype) if write_weights else lse2
    grid = (triton.cdiv(T, blocks["BM"]), B * H)
    _stats_kernel[grid](
        q, k, p, pos_t if pos_t is not None else q, kpm, am, lse2, w, T, B, H,
        *qkp_strides(q, k, p), WRITE_W=write_weights, **mask_flags,
        **common_meta(q, k, p, pos_t, blocks), **blocks)
    return lse2, (w if write_weights else None)


def value_block(dv: int) -> int:
    """Value-dim tile: the whole head when it fits in 64 columns, else 64-wide tiles."""
    return min(64, pow2_at_least_16(dv))


def attention_apply_fwd(q, k, p, pos_t, kpm, am, mask_flags, lse2, v, h0: int, const: bool):
    """out (HSEL, B, T, dv) in v's dtype and, for const, the per-row count of kept keys."""
    T, B, H, _ = q.shape
    hsel, _, _, dv = v.shape
    if v.stride(-1) != 1:
        v = v.contiguous()
    blocks = _blocks()
    bdv = value_block(dv)
    out = torch.empty((hsel, B, T, dv), device=q.device, dtype=v.dtype)
    cnt = torch.empty((hsel, B, T), device=q.device, dtype=torch.float32) if const else lse2
    grid = (triton.cdiv(T, blocks["BM"]), B * hsel, triton.cdiv(dv, bdv))
    _apply_fwd_kernel[grid](
        q, k, p, pos_t if pos_t is not None else q, kpm, am, lse2, v, out, cnt, T, B, H, h0, hsel,
        *qkp_strides(q, k, p), v.stride(0), v.stride(1), v.stride(2), CONST=const, DV=dv, BDV=bdv,
        **mask_flags, **common_meta(q, k, p, pos_t, blocks), **blocks)
    return out, (cnt if const else None)
