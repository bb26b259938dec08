"""Forward kernel of the fused Zipformer attention and its launchers.

`_fwd_kernel` walks the keys of a block of query rows of one (batch, head) once, computing each
score tile once, in one of three ways (constexpr flags):

- ONLINE: online softmax. The row statistics (max, 1/sum; stats (2, B, H, T) fp32, see
  common.probs) come out of the pass and are stored; with HAS_V the same pass also produces the
  use's output, rescaling the accumulator as the max grows (flash attention). This is the first
  use of a layer's weights: heads that the use does not read (non-linear attention reads head 0
  only) get a statistics-only launch, so all heads' statistics cost one score pass in total.
- stats loaded: the later uses, out = P @ v with P exact from the saved statistics (no rescaling);
  CONST gives icefall's constant attention (uniform over the keys whose weight is > 0; the per-row
  count is stored for the backward).
- WRITE_W (with ONLINE): the materialised weights, written in a second walk once the statistics
  are known ("materialize" mode).

The program holds the whole value width of its use (BDV columns, non-linear attention up to 3D/4)
so that no score tile is recomputed per value tile; wide uses take shorter row blocks to keep the
fp32 accumulator within the register budget (`fwd_blocks`). All dots accumulate in fp32; P is cast
to the value dtype for P @ v as flash attention.
"""
import torch
import triton
import triton.language as tl

from .attention_common import (LOG2E, load_head_rows, load_stats, pick_tiles, pow2_at_least_16,
                               probs, score_tile)

# Interpreter tiles: 64 by default; tests use 32 so that their short sequences cross tile edges.
INTERPRETER_BLOCK = 64


# (max value width, BM, BN, warps): wide uses (non-linear attention, 144..384 padded to 256/512)
# take shorter row blocks so the (BM, BDV) fp32 accumulator fits the register cap.
FWD_TILES = ((64, 64, 32, 8), (256, 32, 32, 8), (1 << 30, 16, 32, 8))


def fwd_blocks(bdv: int) -> dict:
    """Launch options for a use of value width bdv (0: statistics only)."""
    return pick_tiles(FWD_TILES, bdv, INTERPRETER_BLOCK)


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 dots as torch does them: TF32 only where torch allows it for matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def common_meta(q, p, pos_t):
    """Constexprs shared by every attention kernel for these inputs."""
    dq = q.shape[-1]
    dp = p.shape[-1] if pos_t is not None else 1
    return dict(HAS_POS=pos_t is not None, DQ=dq, DP=dp, BDQ=pow2_at_least_16(dq),
                PREC=dot_precision(q.dtype))


def qkp_strides(q, k, p):
    """(t, b, h) strides of q, k, p in (T, B, H, d) layout; the head dim must be contiguous."""
    for name, t in (("q", q), ("k", k), ("p", p)):
        if t.stride(-1) != 1:
            raise ValueError(f"attention kernel: {name} must have a contiguous last dim")
    return (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            p.stride(0), p.stride(1), p.stride(2))


def value_strides(v):
    return (v.stride(0), v.stride(1), v.stride(2)) if v is not None else (0, 0, 0)


@triton.jit
def _fwd_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, stats_ptr, v_ptr, o_ptr, cnt_ptr,
                w_ptr, T, B, H, H0, HSEL, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                sv_h, sv_b, sv_t, s_am,
                HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                ONLINE: tl.constexpr, HAS_V: tl.constexpr, CONST: tl.constexpr,
                WRITE_W: tl.constexpr, DQ: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BDQ: tl.constexpr, BDV: tl.constexpr,
                PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HSEL
    hs = pid_bh % HSEL
    h = H0 + hs
    offs_m = pid_m * BM + tl.arange(0, BM)
    in_m = offs_m < T
    q = load_head_rows(q_ptr + b * sq_b + h * sq_h, offs_m, in_m, sq_t, DQ, BDQ)
    k_base = k_ptr + b * sk_b + h * sk_h
    p_base = p_ptr + b * sp_b + h * sp_h
    pos_base = pos_ptr + h * DP * (2 * T - 1)
    kpm_base = kpm_ptr + b * T
    stat_row = (b * H + h) * T
    if ONLINE:
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        il = l_i
    else:
        m_i, il = load_stats(stats_ptr, stat_row, offs_m, in_m, B * H * T)
    offs_v = tl.arange(0, BDV)
    v_base = v_ptr + hs * sv_h + b * sv_b
    acc = tl.zeros([BM, BDV], dtype=tl.float32)
    cnt = tl.zeros([BM], dtype=tl.float32)
    for n0 in range(0, T, BN):
        offs_n = n0 + tl.arange(0, BN)
        in_n = offs_n < T
        k = load_head_rows(k_base, offs_n, in_n, sk_t, DQ, BDQ)
        raw, s, keep = score_tile(q, k, p_base, pos_base, kpm_base, am_ptr, offs_m, in_m, offs_n,
                                  in_n, T, sp_t, s_am, HAS_POS, HAS_KPM, HAS_AM, DP, PREC)
        if HAS_V:
            v = tl.load(v_base + offs_n[:, None] * sv_t + offs_v[None, :],
                        mask=in_n[:, None] & (offs_v[None, :] < DV), other=0.0)
        if ONLINE:
            s2 = s * LOG2E
            m_new = tl.maximum(m_i, tl.max(s2, 1))
            e = tl.exp2(s2 - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(e, 1)
            m_i = m_new
            if HAS_V:
                acc = acc * alpha[:, None]
                acc += tl.dot(e.to(v.dtype), v, input_precision=PREC, out_dtype=tl.float32)
        else:
            pr = probs(s, m_i, il)
            if CONST:
                pr = tl.where(pr > 0.0, 1.0, 0.0)
                cnt += tl.sum(pr, 1)
            acc += tl.dot(pr.to(v.dtype), v, input_precision=PREC, out_dtype=tl.float32)
    if ONLINE:
        il = 1.0 / l_i
        tl.store(stats_ptr + stat_row + offs_m, m_i, mask=in_m)
        tl.store(stats_ptr + B * H * T + stat_row + offs_m, il, mask=in_m)
    if HAS_V:
        row = (hs * B + b) * T + offs_m
        if ONLINE:
            acc = acc * il[:, None]
        if CONST:
            acc = acc / cnt[:, None]
            tl.store(cnt_ptr + row, cnt, mask=in_m)
        tl.store(o_ptr + row[:, None].to(tl.int64) * DV + offs_v[None, :],
                 acc.to(o_ptr.dtype.element_ty), mask=in_m[:, None] & (offs_v[None, :] < DV))
    if WRITE_W:
        w_rows = w_ptr + ((h * B + b) * T + offs_m[:, None]).to(tl.int64) * T
        for n0 in range(0, T, BN):
            offs_n = n0 + tl.arange(0, BN)
            in_n = offs_n < T
            k = load_head_rows(k_base, offs_n, in_n, sk_t, DQ, BDQ)
            raw, s, keep = score_tile(q, k, p_base, pos_base, kpm_base, am_ptr, offs_m, in_m,
                                      offs_n, in_n, T, sp_t, s_am, HAS_POS, HAS_KPM, HAS_AM, DP, PREC)
            tl.store(w_rows + offs_n[None, :], probs(s, m_i, il).to(w_ptr.dtype.element_ty),
                     mask=in_m[:, None] & in_n[None, :])


def _launch_fwd(q, k, p, pos_t, kpm, am, mask_flags, stats, *, h0, hsel, v=None, out=None,
                cnt=None, online, const=False, w=None):
    T, B, H, _ = q.shape
    dv = v.shape[-1] if v is not None else 1
    bdv = pow2_at_least_16(dv) if v is not None else 16
    blocks = fwd_blocks(bdv if v is not None else 0)
    grid = (triton.cdiv(T, blocks["BM"]), B * hsel)
    _fwd_kernel.run(
        q, k, p, pos_t if pos_t is not None else q, kpm, am, stats, v if v is not None else q,
        out if out is not None else q, cnt if cnt is not None else stats, w if w is not None else q,
        T, B, H, h0, hsel, *qkp_strides(q, k, p), *value_strides(v), am.stride(0), grid=grid, warmup=False,
        ONLINE=online, HAS_V=v is not None, CONST=const, WRITE_W=w is not None, DV=dv, BDV=bdv,
        **mask_flags, **common_meta(q, p, pos_t), **blocks)


def attention_weights_fwd(q, k, p, pos_t, kpm, am, mask_flags):
    """Statistics (2, B, H, T) fp32 and the materialised weights (H, B, T, T) in q's dtype."""
    T, B, H, _ = q.shape
    stats = torch.empty((2, B, H, T), device=q.device, dtype=torch.float32)
    w = torch.empty((H, B, T, T), device=q.device, dtype=q.dtype)
    _launch_fwd(q, k, p, pos_t, kpm, am, mask_flags, stats, h0=0, hsel=H, online=True, w=w)
    return stats, w


def attention_apply_fwd(q, k, p, pos_t, kpm, am, mask_flags, stats, v, h0: int, const: bool):
    """One use: out (HSEL, B, T, dv) = W[h0:h0+HSEL] @ v in v's dtype, W recomputed.

    stats None: this is the first use; the statistics of all H heads are computed on the way and
    returned. const: icefall's constant attention; also returns the per-row count of kept keys.
    Returns (out, new statistics or None, count or None).
    """
    T, B, H, _ = q.shape
    hsel = v.shape[0]
    out = torch.empty(v.shape, device=q.device, dtype=v.dtype)
    cnt = torch.empty(v.shape[:3], device=q.device, dtype=torch.float32) if const else None
    new_stats = None
    if stats is None:
        new_stats = stats = torch.empty((2, B, H, T), device=q.device, dtype=torch.float32)
        others = [(0, h0), (h0 + hsel, H - h0 - hsel)] if not const else [(0, H)]
        for lo, n in others:  # heads this use does not read: statistics only
            if n > 0:
                _launch_fwd(q, k, p, pos_t, kpm, am, mask_flags, stats, h0=lo, hsel=n, online=True)
    _launch_fwd(q, k, p, pos_t, kpm, am, mask_flags, stats, h0=h0, hsel=hsel, v=v, out=out,
                cnt=cnt, online=new_stats is not None and not const, const=const)
    return out, new_stats, cnt
