"""Pieces shared by the fused attention kernels: the score tile (content + relative position +
masks, recomputed wherever it is needed so no T x T tensor is ever stored) and the "skew" that moves
a tile between (query, key) and (query, relative offset) coordinates.

Scores (no 1/sqrt(d), as icefall): S[i, j] = q_i . k_j + p_i . pos[(T-1) - i + j]. Masked positions
are -1000 (icefall's fill value: exp(-1000 - max) is exactly 0 in fp32, and a fully masked row
becomes uniform), keys beyond T are -inf (they do not exist).

Relative position on the fly: for a tile of rows m0..m0+BM-1 and keys n0..n0+BN-1 the offsets
n = (T-1) - i + j cover a window of BM+BN-1 rows of pos, starting at n_lo = (T-1) - (m0+BM-1) + n0.
R = p_tile @ pos_window^T is a small dot (pos head dim padded to 16 for tl.dot), and
S_p[a, c] = R[a, c - a + BM - 1] is a register gather (tl.gather). The backward goes the other way:
dR[a, w] = dS[a, w + a - (BM - 1)] (zero outside the tile), then dp = dR @ pos_window and
dpos_window = dR^T @ p.

pos is passed transposed per head, (H, DP, 2T-1) contiguous, so a window row load is contiguous.
"""
import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

MASK_FILL = tl.constexpr(-1000.0)
LOG2E = tl.constexpr(1.4426950408889634)
# icefall penalize_abs_values_gt(scores, limit=25, penalty=1e-4) (training-time, gradient only)
PENALTY_LIMIT = tl.constexpr(25.0)
PENALTY = tl.constexpr(1.0e-4)


@triton.jit
def load_rows(q_ptr, p_ptr, offs_m, in_m, sq_t, sp_t, HAS_POS: tl.constexpr,
              DQ: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BDQ: tl.constexpr,
              BDP: tl.constexpr):
    """q and p rows (BM, BDQ) / (BM, BDP) of one (batch, head), zero-padded; p in q's dtype."""
    offs_dq = tl.arange(0, BDQ)
    q = tl.load(q_ptr + offs_m[:, None] * sq_t + offs_dq[None, :],
                mask=in_m[:, None] & (offs_dq[None, :] < DQ), other=0.0)
    p = tl.zeros([BM, BDP], dtype=q.dtype)
    if HAS_POS:
        offs_dp = tl.arange(0, BDP)
        p = tl.load(p_ptr + offs_m[:, None] * sp_t + offs_dp[None, :],
                    mask=in_m[:, None] & (offs_dp[None, :] < DP), other=0.0).to(q.dtype)
    return q, p


@triton.jit
def score_tile(q, p, k_base, pos_base, kpm_base, am_ptr, offs_m, n0, m0, T, stride_kt,
               HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
               DQ: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
               BDQ: tl.constexpr, BDP: tl.constexpr, NW: tl.constexpr, PREC: tl.constexpr):
    """Scores of rows offs_m (q, p already loaded: (BM, BDQ), (BM, BDP)) against keys n0..n0+BN-1.

    Returns (raw, s, keep, kt, pwin): raw = unmasked scores (fp32, what the penalty looks at),
    s = scores with masked keys at -1000 and nonexistent keys (j >= T) at -inf, keep = key exists and
    is not masked, kt = the (BDQ, BN) key tile and pwin = the (BDP, NW) pos window (reused by the
    backward for dq, dp and dpos).
    """
    offs_n = n0 + tl.arange(0, BN)
    offs_dq = tl.arange(0, BDQ)
    in_n = offs_n < T
    kt = tl.load(k_base + offs_n[None, :] * stride_kt + offs_dq[:, None],
                 mask=in_n[None, :] & (offs_dq[:, None] < DQ), other=0.0)
    raw = tl.dot(q, kt, input_precision=PREC, out_dtype=tl.float32)
    pwin = tl.zeros([BDP, NW], dtype=q.dtype)
    if HAS_POS:
        nwin = 2 * T - 1
        n_lo = (T - 1) - (m0 + BM - 1) + n0
        offs_w = tl.arange(0, NW)
        offs_dp = tl.arange(0, BDP)
        rows = n_lo + offs_w
        win_ok = (offs_w < BM + BN - 1) & (rows >= 0) & (rows < nwin)
        pwin = tl.load(pos_base + offs_dp[:, None] * nwin + rows[None, :],
                       mask=(offs_dp[:, None] < DP) & win_ok[None, :], other=0.0).to(q.dtype)
        r = tl.dot(p, pwin, input_precision=PREC, out_dtype=tl.float32)  # (BM, NW)
        idx = tl.arange(0, BN)[None, :] - tl.arange(0, BM)[:, None] + (BM - 1)
        raw += tl.gather(r, idx, axis=1)
    keep = in_n[None, :] & (offs_m[:, None] >= 0)
    if HAS_KPM:
        pad = tl.load(kpm_base + offs_n, mask=in_n, other=0)
        keep = keep & (pad == 0)[None, :]
    if HAS_AM:
        am = tl.load(am_ptr + offs_m[:, None] * T + offs_n[None, :],
                     mask=(offs_m[:, None] < T) & in_n[None, :], other=0)
        keep = keep & (am == 0)
    s = tl.where(keep, raw, MASK_FILL)
    s = tl.where(in_n[None, :], s, float("-inf"))
    return raw, s, keep, kt, pwin


@triton.jit
def skew_to_offsets(ds, BM: tl.constexpr, BN: tl.constexpr, NW: tl.constexpr):
    """(BM, BN) tile in key coordinates -> (BM, NW) in offset-window coordinates, zero outside."""
    a = tl.arange(0, BM)[:, None]
    col = tl.arange(0, NW)[None, :] + a - (BM - 1)
    ok = (col >= 0) & (col < BN)
    g = tl.gather(ds, tl.minimum(tl.maximum(col, 0), BN - 1), axis=1)
    return tl.where(ok, g, 0.0)


@triton.jit
def window_rows(m0, n0, T, BM: tl.constexpr, BN: tl.constexpr, NW: tl.constexpr):
    """Row indices of pos covered by the window of the tile at (m0, n0), and which are real."""
    offs_w = tl.arange(0, NW)
    rows = (T - 1) - (m0 + BM - 1) + n0 + offs_w
    ok = (offs_w < BM + BN - 1) & (rows >= 0) & (rows < 2 * T - 1)
    return rows, ok


def pow2_at_least_16(n: int) -> int:
    """tl.dot needs every block dim >= 16 on GPUs; pad small head dims (pos 4, value 12)."""
    return max(16, triton.next_power_of_2(int(n)))


@triton.jit
def load_stats(stats_ptr, row0, offs_m, in_m, BHT):
    """Row max m2 (log2 units) and 1/sum of one (batch, head)'s rows; rows past T get (+inf, 0) so
    their probabilities are exactly 0. stats is (2, B, H, T) fp32; row0 = (b * H + h) * T."""
    m2 = tl.load(stats_ptr + row0 + offs_m, mask=in_m, other=float("inf"))
    il = tl.load(stats_ptr + BHT + row0 + offs_m, mask=in_m, other=0.0)
    return m2, il


@triton.jit
def probs(s, m2, il):
    """P = 2^(S log2e - m2) / l. Keeping the max and the sum apart (not one log-sum-exp) keeps
    sum_j P = 1 to a few ulps even for scores ~100, so sum_j dS = 0 as in torch's softmax backward
    (dq = dS @ k cancels the keys' common part only if it does)."""
    return tl.exp2(s * LOG2E - m2[:, None]) * il[:, None]


@triton.jit
def grad_scores(pr, dpt, delta, keep, raw, in_m, in_n, PENALIZE: tl.constexpr):
    """dS of one use: softmax backward P * (dP - D_i) on kept positions (masked_fill passes no
    gradient, so a fully masked row gets none), plus icefall's penalty on the unmasked scores
    (1e-4 * sign(S) where |S| > 25, at every real position, masked or not)."""
    ds = tl.where(keep & in_m[:, None], pr * (dpt - delta[:, None]), 0.0)
    if PENALIZE:
        pen = tl.where(raw > PENALTY_LIMIT, PENALTY, tl.where(raw < -PENALTY_LIMIT, -PENALTY, 0.0))
        ds += tl.where(in_m[:, None] & in_n[None, :], pen, 0.0)
    return ds
