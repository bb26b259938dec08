"""Backward kernels of the fused Zipformer attention and their launcher.

One backward serves every use of the shared weights. For a use out = W @ v with incoming dout,
dP = dout @ v^T and D_i = rowsum(dout * out); for the materialised weights dP = dW (the sum over
all uses, accumulated by autograd) and D_i = rowsum(dW * W). Either way
dS = P * (dP - D_i) (zero where masked) [+ icefall's penalty], with P recomputed from the saved
row statistics, and

    dq = dS @ k,  dk = dS^T @ q,  dp[i] = sum_j dS[i,j] pos[(T-1)-i+j],
    dpos[n] = sum_{b,i} dS[b,i,i+n-(T-1)] p[b,i]       (the skew of common.py, then two small dots).

Kernels: `_bwd_dq_kernel` walks keys for a row block (dq, dp, dpos; dpos is atomically added
into a per-batch fp32 buffer summed afterwards); `_bwd_dkdv_kernel` walks rows for a key block
(dk and/or dv; dv may be tiled over the value dim, which non-linear attention needs). Constant
attention has a gradient only for v.
"""
import torch
import triton
import triton.language as tl

from .attention_common import (grad_scores, load_rows, load_stats, probs, score_tile,
                               skew_to_offsets, window_rows)
from .attention_fwd import _blocks, common_meta, qkp_strides, value_block


@triton.jit
def _dp_tile(do_base, v_base, dw_rows, offs_m, in_m, offs_n, in_n, sv_t, LOAD_DP: tl.constexpr,
             DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BDV: tl.constexpr,
             PREC: tl.constexpr):
    """dP tile (BM, BN) fp32: loaded from dW, or dout @ v^T accumulated over value-dim chunks."""
    if LOAD_DP:
        dpt = tl.load(dw_rows + offs_n[None, :], mask=in_m[:, None] & in_n[None, :],
                      other=0.0).to(tl.float32)
    else:
        dpt = tl.zeros([BM, BN], dtype=tl.float32)
        for c0 in range(0, DV, BDV):
            offs_v = c0 + tl.arange(0, BDV)
            in_v = offs_v < DV
            do = tl.load(do_base + offs_m[:, None] * DV + offs_v[None, :],
                         mask=in_m[:, None] & in_v[None, :], other=0.0)
            vt = tl.load(v_base + offs_n[None, :] * sv_t + offs_v[:, None],
                         mask=in_n[None, :] & in_v[:, None], other=0.0)
            dpt += tl.dot(do, vt, input_precision=PREC, out_dtype=tl.float32)
    return dpt


@triton.jit
def _bwd_dq_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, lse_ptr, delta_ptr, do_ptr, v_ptr,
                   dw_ptr, dq_ptr, dp_ptr, dpos_ptr,
                   T, B, H, H0, HSEL, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                   sv_h, sv_b, sv_t,
                   HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                   LOAD_DP: tl.constexpr, PENALIZE: tl.constexpr, DQ: tl.constexpr,
                   DP: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                   BDQ: tl.constexpr, BDP: tl.constexpr, BDV: tl.constexpr, NW: tl.constexpr,
                   PREC: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
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
    row = (hs * B + b) * T + offs_m
    delta = tl.load(delta_ptr + row, mask=in_m, other=0.0)
    do_base = do_ptr + (hs * B + b) * T * DV
    v_base = v_ptr + hs * sv_h + b * sv_b
    dw_rows = dw_ptr + ((h * B + b) * T + offs_m[:, None]).to(tl.int64) * T
    dpos_base = dpos_ptr + (b * H + h) * DP * (2 * T - 1)
    offs_dp = tl.arange(0, BDP)
    dq_acc = tl.zeros([BM, BDQ], dtype=tl.float32)
    dp_acc = tl.zeros([BM, BDP], dtype=tl.float32)
    for n0 in range(0, T, BN):
        raw, s, keep, kt, pwin = score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0, m0,
                                            T, sk_t, HAS_POS, HAS_KPM, HAS_AM, DQ, DP, BM, BN,
                                            BDQ, BDP, NW, PREC)
        pr = probs(s, m2, il)
        offs_n = n0 + tl.arange(0, BN)
        in_n = offs_n < T
        dpt = _dp_tile(do_base, v_base, dw_rows, offs_m, in_m, offs_n, in_n, sv_t, LOAD_DP, DV,
                       BM, BN, BDV, PREC)
        ds = grad_scores(pr, dpt, delta, keep, raw, in_m, in_n, PENALIZE).to(q.dtype)
        dq_acc += tl.dot(ds, tl.trans(kt), input_precision=PREC, out_dtype=tl.float32)
        if HAS_POS:
            dr = skew_to_offsets(ds, BM, BN, NW)                      # (BM, NW)
            dp_acc += tl.dot(dr, tl.trans(pwin), input_precision=PREC, out_dtype=tl.float32)
            dposw = tl.dot(tl.trans(dr), p, input_precision=PREC, out_dtype=tl.float32)
            rows, ok = window_rows(m0, n0, T, BM, BN, NW)
            tl.atomic_add(dpos_base + offs_dp[None, :] * (2 * T - 1) + rows[:, None], dposw,
                          mask=ok[:, None] & (offs_dp[None, :] < DP))
    # dq, dp: contiguous (T, B, H, d)
    offs_dq = tl.arange(0, BDQ)
    tl.store(dq_ptr + ((offs_m[:, None] * B + b) * H + h) * DQ + offs_dq[None, :],
             dq_acc.to(dq_ptr.dtype.element_ty), mask=in_m[:, None] & (offs_dq[None, :] < DQ))
    if HAS_POS:
        tl.store(dp_ptr + ((offs_m[:, None] * B + b) * H + h) * DP + offs_dp[None, :],
                 dp_acc.to(dp_ptr.dtype.element_ty), mask=in_m[:, None] & (offs_dp[None, :] < DP))


@triton.jit
def _bwd_dkdv_kernel(q_ptr, k_ptr, p_ptr, pos_ptr, kpm_ptr, am_ptr, lse_ptr, delta_ptr, cnt_ptr,
                     do_ptr, v_ptr, dw_ptr, dk_ptr, dv_ptr,
                     T, B, H, H0, HSEL, sq_t, sq_b, sq_h, sk_t, sk_b, sk_h, sp_t, sp_b, sp_h,
                     sv_h, sv_b, sv_t,
                     HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
                     LOAD_DP: tl.constexpr, PENALIZE: tl.constexpr, CONST: tl.constexpr,
                     COMPUTE_DK: tl.constexpr, COMPUTE_DV: tl.constexpr, DQ: tl.constexpr,
                     DP: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     BDQ: tl.constexpr, BDP: tl.constexpr, BDV: tl.constexpr, NW: tl.constexpr,
                     PREC: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_v = tl.program_id(2)
    b = pid_bh // HSEL
    hs = pid_bh % HSEL
    h = H0 + hs
    n0 = pid_n * BN
    offs_n = n0 + tl.arange(0, BN)
    in_n = offs_n < T
    k_base = k_ptr + b * sk_b + h * sk_h
    pos_base = pos_ptr + h * DP * (2 * T - 1)
    kpm_base = kpm_ptr + b * T
    do_base = do_ptr + (hs * B + b) * T * DV
    v_base = v_ptr + hs * sv_h + b * sv_b
    offs_v = pid_v * BDV + tl.arange(0, BDV)
    in_v = offs_v < DV
    dk_acc = tl.zeros([BN, BDQ], dtype=tl.float32)
    dv_acc = tl.zeros([BN, BDV], dtype=tl.float32)
    for m0 in range(0, T, BM):
        offs_m = m0 + tl.arange(0, BM)
        in_m = offs_m < T
        q, p = load_rows(q_ptr + b * sq_b + h * sq_h, p_ptr + b * sp_b + h * sp_h, offs_m, in_m,
                         sq_t, sp_t, HAS_POS, DQ, DP, BM, BDQ, BDP)
        m2, il = load_stats(lse_ptr, (b * H + h) * T, offs_m, in_m, B * H * T)
        raw, s, keep, kt, pwin = score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0, m0,
                                            T, sk_t, HAS_POS, HAS_KPM, HAS_AM, DQ, DP, BM, BN,
                                            BDQ, BDP, NW, PREC)
        pr = probs(s, m2, il)
        row = (hs * B + b) * T + offs_m
        if CONST:
            cnt = tl.load(cnt_ptr + row, mask=in_m, other=1.0)
            pr = tl.where(pr > 0.0, 1.0, 0.0) / cnt[:, None]
        if COMPUTE_DV:
            do = tl.load(do_base + offs_m[:, None] * DV + offs_v[None, :],
                         mask=in_m[:, None] & in_v[None, :], other=0.0)
            dv_acc += tl.dot(tl.trans(pr.to(do.dtype)), do, input_precision=PREC,
                             out_dtype=tl.float32)
        if COMPUTE_DK:
            delta = tl.load(delta_ptr + row, mask=in_m, other=0.0)
            dw_rows = dw_ptr + ((h * B + b) * T + offs_m[:, None]).to(tl.int64) * T
            dpt = _dp_tile(do_base, v_base, dw_rows, offs_m, in_m, offs_n, in_n, sv_t, LOAD_DP,
                           DV, BM, BN, BDV, PREC)
            ds = grad_scores(pr, dpt, delta, keep, raw, in_m, in_n, PENALIZE).to(q.dtype)
            dk_acc += tl.dot(tl.trans(ds), q, input_precision=PREC, out_dtype=tl.float32)
    if COMPUTE_DK:
        offs_dq = tl.arange(0, BDQ)
        tl.store(dk_ptr + ((offs_n[:, None] * B + b) * H + h) * DQ + offs_dq[None, :],
                 dk_acc.to(dk_ptr.dtype.element_ty), mask=in_n[:, None] & (offs_dq[None, :] < DQ))
    if COMPUTE_DV:
        tl.store(dv_ptr + ((hs * B + b) * T + offs_n[:, None]) * DV + offs_v[None, :],
                 dv_acc.to(dv_ptr.dtype.element_ty), mask=in_n[:, None] & in_v[None, :])


def attention_bwd(q, k, p, pos_t, kpm, am, mask_flags, lse2, *, h0: int, hsel: int, delta=None,
                  dout=None, v=None, dw=None, cnt=None, const=False, penalize=False,
                  need_qk=True, need_v=True):
    """Gradients (dq, dk, dp, dpos_t, dv) of one use (dout, v) or of the materialised weights (dw).

    dq/dk/dp are (T, B, H, d) contiguous, zero outside the selected heads; dpos_t is (H, DP, 2T-1)
    like pos_t. Entries not asked for (or meaningless, e.g. q grads of constant attention) are None.
    """
    T, B, H, dqd = q.shape
    blocks = _blocks()
    meta = common_meta(q, k, p, pos_t, blocks)
    load_dp = dw is not None
    if load_dp:
        dv_dim, bdv, vv, dov, sv = 1, 16, q, q, (0, 0, 0)
    else:
        dv_dim = v.shape[-1]
        bdv = value_block(dv_dim)
        vv = v if v.stride(-1) == 1 else v.contiguous()
        dov = dout.contiguous()
        sv = (vv.stride(0), vv.stride(1), vv.stride(2))
    dwv = dw if load_dp else q
    need_qk = need_qk and not const
    dq = dk = dp = dpos = dv = None
    args_tail = (T, B, H, h0, hsel, *qkp_strides(q, k, p), *sv)
    pos_arg = pos_t if pos_t is not None else q
    if need_qk:
        alloc = torch.zeros if hsel != H else torch.empty
        dq = alloc(q.shape, device=q.device, dtype=q.dtype)
        dk = alloc(k.shape, device=q.device, dtype=k.dtype)
        dp = alloc(p.shape, device=q.device, dtype=p.dtype) if pos_t is not None else q
        dpos_b = (torch.zeros((B,) + tuple(pos_t.shape), device=q.device, dtype=torch.float32)
                  if pos_t is not None else q)
        grid = (triton.cdiv(T, blocks["BM"]), B * hsel)
        _bwd_dq_kernel[grid](q, k, p, pos_arg, kpm, am, lse2, delta, dov, vv, dwv, dq, dp, dpos_b,
                             *args_tail, LOAD_DP=load_dp, PENALIZE=penalize, DV=dv_dim, BDV=bdv,
                             **mask_flags, **meta, **blocks)
        if pos_t is not None:
            dpos = dpos_b.sum(0).to(pos_t.dtype)
        else:
            dp = None
    if need_v and not load_dp:
        dv = torch.empty((hsel, B, T, dv_dim), device=q.device, dtype=v.dtype)
    one_pass = need_qk and dv is not None and dv_dim <= bdv
    launches = []
    if one_pass:
        launches.append((True, True, 1))
    else:
        if need_qk:
            launches.append((True, False, 1))
        if dv is not None:
            launches.append((False, True, triton.cdiv(dv_dim, bdv)))
    for compute_dk, compute_dv, n_v in launches:
        if compute_dk:
            dk_buf = dk
        else:
            dk_buf = q
        grid = (triton.cdiv(T, blocks["BN"]), B * hsel, n_v)
        _bwd_dkdv_kernel[grid](q, k, p, pos_arg, kpm, am, lse2, delta if delta is not None else lse2,
                               cnt if cnt is not None else lse2, dov, vv, dwv, dk_buf,
                               dv if dv is not None else q, *args_tail, LOAD_DP=load_dp,
                               PENALIZE=penalize, CONST=const, COMPUTE_DK=compute_dk,
                               COMPUTE_DV=compute_dv, DV=dv_dim, BDV=bdv, **mask_flags, **meta,
                               **blocks)
    return dq, dk, dp, dpos, dv
