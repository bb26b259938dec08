"""Backward kernel of the fused Zipformer attention and its launcher: one score pass per use.

For a use out = P @ v with incoming dout (or the materialised weights with their summed dW):

    dP = dout @ v^T  (or dW),  D_i = rowsum(dout * out)  (or rowsum(dW * W)),
    dS = P * (dP - D_i) (zero where masked) [+ icefall's penalty],  dv = P^T @ dout,
    dq = dS @ k,  dk = dS^T @ q,  dp[i] = sum_j dS[i,j] pos[(T-1)-i+j],
    dpos[n] = sum_{b,i} dS[b,i,i+n-(T-1)] p[b,i].

`_bwd_kernel` owns a block of keys of one (batch, head) and walks the query rows once, recomputing
each score tile and P once: dk and dv accumulate in registers; dq, dp and dpos (whose owners are
rows and offsets, not keys) are added atomically into fp32 buffers, as flash attention 2 does for
dq. dp and dpos come from dS in offset coordinates (common.skew_piece, NW columns at a time), via
two small dots per piece. D is a separate row-dot kernel (one read of dout and out).

Non-linear attention (one head, values 144..384 wide) walks once as well: its dv accumulates
transposed, (BDV, BN), so the MMA spreads the value rows over the warps, and dP's contraction runs
in DPC-wide chunks. Under the 168-register cap that fits without spills on sm_90 at every width and
on sm_80 up to a padded width of 256; wider values on older GPUs walk twice (dS, then dv;
`one_walk`). Why one pass per use and not one pass for all three uses: each use's dv is needed by
autograd before the earlier uses' dout exist (SA2's v is computed from SA1's output, SA1's from
non-linear attention's), so a use's backward must walk P itself; it computes its share of dS (dS
is linear in (dP, D)) in the same walk. A layer's backward is therefore 2 all-head passes (the
two self-attentions) plus one head-0 walk (non-linear attention): 2 + 1/H.
"""
import functools

import torch
import triton
import triton.language as tl

from .attention_common import (INTERPRET, grad_scores, load_head_rows, load_stats, pick_tiles,
                               pow2_at_least_16, probs, score_tile, skew_piece)
from . import attention_fwd as _fwd


# (max value width, BM, BN, warps): the backward holds much more per tile than the forward (P, dP,
# dS, the offset pieces, three atomic targets), and ptxas keeps many loop-invariant addresses live:
# 16 x 16 tiles are what fits 168 registers without spills (bench/results/ptxas/report.md).
BWD_TILES = ((64, 16, 16, 4), (1 << 30, 16, 16, 8))
# Widest padded value width whose one-walk backward fits the register cap on every GPU; above it
# (BDV 512) only sm_90 and newer fit it (bench/results/ptxas/report.md), older GPUs walk twice.
ONE_WALK_MAX_BDV = 256
NARROW_DV = tl.constexpr(64)  # up to this, dv accumulates as (BN, BDV) and dP is one dot


def one_walk(bdv: int, device: torch.device) -> bool:
    """Whether a use of padded value width bdv computes dS and dv in one walk on `device`."""
    if bdv <= ONE_WALK_MAX_BDV or INTERPRET or device.type != "cuda":
        return True
    return _sm90_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _sm90_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9  # asked once per GPU, not per backward


def dp_chunk(bdv: int) -> int:
    """Value columns per step of dP's contraction for wide uses (what fits the cap, per ptxas)."""
    return 64 if bdv <= ONE_WALK_MAX_BDV else 32


def offset_piece(blocks) -> int:
    """Width of the offset-coordinate pieces of a (BM, BN) tile: its whole BM + BN - 1 window at
    once (one gather, one pos-window load, two dots and one atomic add per tile)."""
    return triton.next_power_of_2(blocks["BM"] + blocks["BN"] - 1)


def bwd_blocks(bdv: int) -> dict:
    """Launch options for the backward of a use of value width bdv."""
    return pick_tiles(BWD_TILES, bdv, _fwd.INTERPRETER_BLOCK)


@triton.jit
def _row_dot_kernel(a_ptr, b_ptr, out_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    """out[r] = sum_c a[r, c] * b[r, c] in fp32; a, b contiguous (R, C)."""
    offs_r = tl.program_id(0) * BR + tl.arange(0, BR)
    in_r = offs_r < R
    acc = tl.zeros([BR], dtype=tl.float32)
    for c0 in range(0, C, BC):
        offs_c = c0 + tl.arange(0, BC)
        msk = in_r[:, None] & (offs_c[None, :] < C)
        off = offs_r[:, None].to(tl.int64) * C + offs_c[None, :]
        x = tl.load(a_ptr + off, mask=msk, other=0.0).to(tl.float32)
        y = tl.load(b_ptr + off, mask=msk, other=0.0).to(tl.float32)
        acc += tl.sum(x * y, 1)
    tl.store(out_ptr + offs_r, acc, mask=in_r)


def row_dot(a, b):
    """rowsum(a * b) over the last dim in fp32, shape a.shape[:-1]."""
    a, b = a.contiguous(), b.contiguous()
    C = a.shape[-1]
    R = a.numel() // C
    out = torch.empty(a.shape[:-1], device=a.device, dtype=torch.float32)
    BC = min(128, triton.next_power_of_2(C))
    BR = 32 if INTERPRET else max(16, 4096 // BC)
    _row_dot_kernel.run(a, b, out, R, C, grid=(triton.cdiv(R, BR),), warmup=False, BR=BR, BC=BC)
    return out


@triton.jit
def _bwd_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, stats_ptr, delta_ptr, cnt_ptr,
                do_ptr, v_ptr, dw_ptr, dq_ptr, dk_ptr, dp_ptr, dpos_ptr, dv_ptr,
                T, B, H, H0, HSEL, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                sv_h, sv_b, sv_t, s_am,
                HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                LOAD_DP: tl.constexpr, PENALIZE: tl.constexpr, CONST: tl.constexpr,
                COMPUTE_DS: tl.constexpr, COMPUTE_DV: tl.constexpr, DQ: tl.constexpr,
                DP: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                BDQ: tl.constexpr, BDP: tl.constexpr, BDV: tl.constexpr, NW: tl.constexpr,
                DPC: tl.constexpr, PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HSEL
    hs = pid_bh % HSEL
    h = H0 + hs
    n0 = pid_n * BN
    offs_n = n0 + tl.arange(0, BN)
    in_n = offs_n < T
    k = load_head_rows(k_ptr + b * sk_b + h * sk_h, offs_n, in_n, sk_t, DQ, BDQ)
    q_base = q_ptr + b * sq_b + h * sq_h
    p_base = p_ptr + b * sp_b + h * sp_h
    nwin = 2 * T - 1
    pos_base = pos_ptr + h * DP * nwin
    kpm_base = kpm_ptr + b * T
    do_base = do_ptr + (hs * B + b) * T * DV
    offs_v = tl.arange(0, BDV)
    in_v = offs_v < DV
    offs_dq = tl.arange(0, BDQ)
    offs_dp = tl.arange(0, BDP)
    offs_w = tl.arange(0, NW)
    v_base = v_ptr + hs * sv_h + b * sv_b
    if COMPUTE_DS:
        if not LOAD_DP:
            if BDV <= NARROW_DV:
                vt = tl.load(v_base + offs_n[None, :] * sv_t + offs_v[:, None],
                             mask=in_n[None, :] & in_v[:, None], other=0.0)
    dk_acc = tl.zeros([BN, BDQ], dtype=tl.float32)
    # wide values accumulate dv transposed, (BDV, BN): the MMA then spreads the BDV rows over the
    # warps; as (BN, BDV) with BN = 16 every warp would hold the whole tile (spills at BDV 256-512)
    if BDV <= NARROW_DV:
        dv_acc = tl.zeros([BN, BDV], dtype=tl.float32)
    else:
        dv_acc = tl.zeros([BDV, BN], dtype=tl.float32)
    for m0 in range(0, T, BM):
        offs_m = m0 + tl.arange(0, BM)
        in_m = offs_m < T
        q = load_head_rows(q_base, offs_m, in_m, sq_t, DQ, BDQ)
        m2, il = load_stats(stats_ptr, (b * H + h) * T, offs_m, in_m, B * H * T)
        raw, s, keep = score_tile(q, k, p_base, pos_base, kpm_base, am_ptr, offs_m, in_m, offs_n,
                                  in_n, T, sp_t, s_am, HAS_POS, HAS_KPM, HAS_AM, DP, PREC)
        pr = probs(s, m2, il)
        row = (hs * B + b) * T + offs_m
        if BDV <= NARROW_DV:
            if COMPUTE_DV or (not LOAD_DP):
                do = tl.load(do_base + offs_m[:, None] * DV + offs_v[None, :],
                             mask=in_m[:, None] & in_v[None, :], other=0.0)
        if COMPUTE_DV:
            pv = pr
            if CONST:
                c = tl.load(cnt_ptr + row, mask=in_m, other=1.0)
                pv = tl.where(pr > 0.0, 1.0, 0.0) / c[:, None]
            if BDV <= NARROW_DV:
                dv_acc += tl.dot(tl.trans(pv.to(do.dtype)), do, input_precision=PREC,
                                 out_dtype=tl.float32)
            else:
                do_t = tl.load(do_base + offs_m[None, :] * DV + offs_v[:, None],
                               mask=in_m[None, :] & in_v[:, None], other=0.0)      # (BDV, BM)
                dv_acc += tl.dot(do_t, pv.to(do_t.dtype), input_precision=PREC, out_dtype=tl.float32)
        if COMPUTE_DS:
            if LOAD_DP:
                dw_rows = dw_ptr + ((h * B + b) * T + offs_m[:, None]).to(tl.int64) * T
                dpt = tl.load(dw_rows + offs_n[None, :], mask=in_m[:, None] & in_n[None, :],
                              other=0.0).to(tl.float32)
            elif BDV <= NARROW_DV:
                dpt = tl.dot(do, vt, input_precision=PREC, out_dtype=tl.float32)
            else:
                # wide values: dP's contraction in chunks, so that small (BM, BN) tiles do not
                # hold (BM, BDV) and (BDV, BN) operands in every warp at once
                dpt = tl.zeros([BM, BN], dtype=tl.float32)
                for c0 in range(0, DV, DPC):
                    offs_c = c0 + tl.arange(0, DPC)
                    in_c = offs_c < DV
                    doc = tl.load(do_base + offs_m[:, None] * DV + offs_c[None, :],
                                  mask=in_m[:, None] & in_c[None, :], other=0.0)
                    vtc = tl.load(v_base + offs_n[None, :] * sv_t + offs_c[:, None],
                                  mask=in_n[None, :] & in_c[:, None], other=0.0)
                    dpt += tl.dot(doc, vtc, input_precision=PREC, out_dtype=tl.float32)
            delta = tl.load(delta_ptr + row, mask=in_m, other=0.0)
            ds = grad_scores(pr, dpt, delta, keep, raw, in_m, in_n, PENALIZE).to(q.dtype)
            dk_acc += tl.dot(tl.trans(ds), q, input_precision=PREC, out_dtype=tl.float32)
            dq_part = tl.dot(ds, k, input_precision=PREC, out_dtype=tl.float32)
            rows_bh = (offs_m[:, None] * B + b) * H + h
            tl.atomic_add(dq_ptr + rows_bh * DQ + offs_dq[None, :], dq_part,
                          mask=in_m[:, None] & (offs_dq[None, :] < DQ))
            if HAS_POS:
                p = load_head_rows(p_base, offs_m, in_m, sp_t, DP, BDP).to(q.dtype)
                n_lo = (T - 1) - (m0 + BM - 1) + n0
                dp_part = tl.zeros([BM, BDP], dtype=tl.float32)
                for piece in tl.static_range((BM + BN - 2 + NW) // NW):
                    dr = skew_piece(ds, piece, BM, BN, NW)                 # (BM, NW)
                    w = piece * NW + offs_w
                    prow = n_lo + w
                    ok = (w < BM + BN - 1) & (prow >= 0) & (prow < nwin)
                    pw_off = h * DP * nwin + offs_dp[None, :] * nwin + prow[:, None]
                    pw_mask = ok[:, None] & (offs_dp[None, :] < DP)
                    pwin = tl.load(pos_ptr + pw_off, mask=pw_mask, other=0.0).to(q.dtype)
                    dp_part += tl.dot(dr, pwin, input_precision=PREC, out_dtype=tl.float32)
                    dposw = tl.dot(tl.trans(dr), p, input_precision=PREC, out_dtype=tl.float32)
                    tl.atomic_add(dpos_ptr + pw_off, dposw, mask=pw_mask)
                tl.atomic_add(dp_ptr + rows_bh * DP + offs_dp[None, :], dp_part,
                              mask=in_m[:, None] & (offs_dp[None, :] < DP))
    if COMPUTE_DS:
        tl.store(dk_ptr + ((offs_n[:, None] * B + b) * H + h) * DQ + offs_dq[None, :],
                 dk_acc.to(dk_ptr.dtype.element_ty), mask=in_n[:, None] & (offs_dq[None, :] < DQ))
    if COMPUTE_DV:
        dv_rows = dv_ptr + ((hs * B + b) * T + offs_n) * DV
        if BDV <= NARROW_DV:
            tl.store(dv_rows[:, None] + offs_v[None, :], dv_acc.to(dv_ptr.dtype.element_ty),
                     mask=in_n[:, None] & in_v[None, :])
        else:
            tl.store(dv_rows[None, :] + offs_v[:, None], dv_acc.to(dv_ptr.dtype.element_ty),
                     mask=in_n[None, :] & in_v[:, None])


def attention_bwd(q, k, p, pos_t, kpm, am, mask_flags, stats, *, h0: int, hsel: int, dout=None,
                  v=None, out=None, dw=None, w=None, cnt=None, const=False, penalize=False,
                  need_qk=True, need_v=True):
    """Gradients (dq, dk, dp, dpos_t, dv) of one use (dout, v, out) or of the materialised weights
    (dw, w), in one score pass.

    dq/dk/dp are (T, B, H, d), zero outside the selected heads; dpos_t is (H, DP, 2T-1) like pos_t.
    Entries not asked for (or meaningless, e.g. q grads of constant attention) are None.
    """
    T, B, H, dqd = q.shape
    load_dp = dw is not None
    need_qk = need_qk and not const
    need_v = need_v and not load_dp
    if not (need_qk or need_v):
        return None, None, None, None, None
    if load_dp:
        dv_dim, vv, dov = 1, None, q
    else:
        dv_dim = v.shape[-1]
        vv = v if v.stride(-1) == 1 else v.contiguous()
        dov = dout.contiguous()
    bdv = pow2_at_least_16(dv_dim)
    delta = None
    if need_qk:
        delta = row_dot(dw, w) if load_dp else row_dot(dov, out)
    f32 = dict(device=q.device, dtype=torch.float32)
    has_pos = pos_t is not None
    dq32 = torch.zeros(q.shape, **f32) if need_qk else None
    dp32 = torch.zeros(p.shape, **f32) if need_qk and has_pos else None
    dpos32 = torch.zeros(pos_t.shape, **f32) if need_qk and has_pos else None
    dk = None
    if need_qk:
        dk = (torch.zeros if hsel != H else torch.empty)(k.shape, device=q.device, dtype=k.dtype)
    dv = torch.empty((hsel, B, T, dv_dim), device=q.device, dtype=v.dtype) if need_v else None
    blocks = bwd_blocks(bdv)
    grid = (triton.cdiv(T, blocks["BN"]), B * hsel)
    # Wide uses on GPUs whose one walk would spill: dS and dv in two walks (see one_walk).
    split = need_qk and need_v and not one_walk(bdv, q.device)
    walks = [(need_qk, False), (False, need_v)] if split else [(need_qk, need_v)]
    dummy = stats
    for compute_ds, compute_dv in walks:
        _bwd_kernel.run(
            q, k, p, pos_t if has_pos else q, kpm, am, stats,
            delta if delta is not None else dummy, cnt if cnt is not None else dummy, dov,
            vv if vv is not None else q, dw if load_dp else q,
            dq32 if dq32 is not None else dummy, dk if dk is not None else q,
            dp32 if dp32 is not None else dummy, dpos32 if dpos32 is not None else dummy,
            dv if dv is not None else q,
            T, B, H, h0, hsel, *_fwd.qkp_strides(q, k, p), *_fwd.value_strides(vv), am.stride(0),
            grid=grid, warmup=False, LOAD_DP=load_dp, PENALIZE=penalize, CONST=const, COMPUTE_DS=compute_ds,
            COMPUTE_DV=compute_dv, DV=dv_dim, BDV=bdv, BDP=pow2_at_least_16(p.shape[-1]),
            NW=offset_piece(blocks), DPC=dp_chunk(bdv), **mask_flags, **_fwd.common_meta(q, p, pos_t), **blocks)
    dq = dq32.to(q.dtype) if dq32 is not None else None
    dp = dp32.to(p.dtype) if dp32 is not None else None
    dpos = dpos32.to(pos_t.dtype) if dpos32 is not None else None
    return dq, dk, dp, dpos, dv
