"""Pieces shared by the fused attention kernels: loading query/key tiles, the score tile (content +
relative position + masks, recomputed wherever it is needed so no T x T tensor is ever stored),
softmax probabilities from the saved row statistics, and the softmax backward of one tile.

Scores (no 1/sqrt(d), as icefall): S[i, j] = q_i . k_j + p_i . pos[(T-1) - i + j]. Masked positions
are -1000 (icefall's fill value: exp(-1000 - max) is exactly 0 in fp32, and a fully masked row
becomes uniform), keys beyond T are -inf (they do not exist).

Relative position: pos_head_dim is tiny (4 in every Zipformer), so the positional term is DP
multiply-adds per score with the projections loaded straight from the tile's offset band
pos[d, (T-1) - i + j] (contiguous along j: coalesced, and the band of BM + BN - 1 values per d
stays in L1). No (BM, BM + BN) product tile and no register gather in the forward. The backward
needs sums along the band's diagonals (dpos[n] = sum over i - j = const); `skew_piece` moves dS
into offset coordinates, NW columns at a time (see attention_bwd.py).

pos is passed transposed per head, (H, DP, 2T-1) contiguous, so a band row load is contiguous.
"""

import triton
import triton.language as tl

from zipformer_fast.runtime import triton_interpret

INTERPRET = triton_interpret()  # read once: Triton decides interpreter-or-not at decoration time too

MASK_FILL = tl.constexpr(-1000.0)
LOG2E = tl.constexpr(1.4426950408889634)
# icefall penalize_abs_values_gt(scores, limit=25, penalty=1e-4) (training-time, gradient only)
PENALTY_LIMIT = tl.constexpr(25.0)
PENALTY = tl.constexpr(1.0e-4)


# ptxas register cap of every attention kernel on GPUs: 168 x 128 threads lets three 4-warp
# programs share an SM (255 allows two); see bench/results/ptxas/report.md for what fits.
MAX_REGISTERS = 168


def pick_tiles(table, bdv: int, interpreter_block: int) -> dict:
    """Launch options for value width bdv from rows (max_bdv, BM, BN, num_warps), first that fits.
    Interpreter: square tiles of interpreter_block (tests shrink them to cross tile edges)."""
    if INTERPRET:
        return dict(BM=interpreter_block, BN=interpreter_block, num_warps=1, num_stages=1)
    for max_bdv, bm, bn, warps in table:
        if bdv <= max_bdv:
            return dict(BM=bm, BN=bn, num_warps=warps, num_stages=1, maxnreg=MAX_REGISTERS)
    raise ValueError(f"no tile size for value width {bdv}")


def pow2_at_least_16(n: int) -> int:
    """tl.dot needs every block dim >= 16 on GPUs; pad small head dims (pos 4, value 12)."""
    return max(16, triton.next_power_of_2(int(n)))


@triton.jit
def load_head_rows(base, offs, in_rows, stride_t, D: tl.constexpr, BD: tl.constexpr):
    """(len(offs), BD) rows of one (batch, head) of a (T, B, H, D) tensor, zero-padded."""
    offs_d = tl.arange(0, BD)
    return tl.load(base + offs[:, None] * stride_t + offs_d[None, :],
                   mask=in_rows[:, None] & (offs_d[None, :] < D), other=0.0)


@triton.jit
def score_tile(q, k, p_base, pos_base, kpm_base, am_ptr, offs_m, in_m, offs_n, in_n, T, sp_t,
               s_am,
               HAS_POS: tl.constexpr, HAS_KPM: tl.constexpr, HAS_AM: tl.constexpr,
               DP: tl.constexpr, PREC: tl.constexpr):
    """Scores of rows offs_m (q: (BM, BDQ)) against keys offs_n (k: (BN, BDQ)).

    Returns (raw, s, keep): raw = unmasked scores (fp32, what the penalty looks at), s = scores
    with masked keys at -1000 and nonexistent keys (j >= T) at -inf, keep = key exists and is not
    masked.
    """
    raw = tl.dot(q, tl.trans(k), input_precision=PREC, out_dtype=tl.float32)
    if HAS_POS:
        nwin = 2 * T - 1
        band = (T - 1) - offs_m[:, None] + offs_n[None, :]
        ok = in_m[:, None] & in_n[None, :]
        for d in tl.static_range(DP):
            pcol = tl.load(p_base + offs_m * sp_t + d, mask=in_m, other=0.0).to(tl.float32)
            posv = tl.load(pos_base + d * nwin + band, mask=ok, other=0.0).to(tl.float32)
            raw += pcol[:, None] * posv
    keep = in_n[None, :] & (offs_m[:, None] >= 0)
    if HAS_KPM:
        pad = tl.load(kpm_base + offs_n, mask=in_n, other=0)
        keep = keep & (pad == 0)[None, :]
    if HAS_AM:
        am = tl.load(am_ptr + offs_m[:, None] * s_am + offs_n[None, :],
                     mask=in_m[:, None] & in_n[None, :], other=0)
        keep = keep & (am == 0)
    s = tl.where(keep, raw, MASK_FILL)
    s = tl.where(in_n[None, :], s, float("-inf"))
    return raw, s, keep


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
    """dS: softmax backward P * (dP - D_i) on kept positions (masked_fill passes no gradient, so a
    fully masked row gets none), plus icefall's penalty on the unmasked scores (1e-4 * sign(S)
    where |S| > 25, at every real position, masked or not)."""
    ds = tl.where(keep & in_m[:, None], pr * (dpt - delta[:, None]), 0.0)
    if PENALIZE:
        pen = tl.where(raw > PENALTY_LIMIT, PENALTY, tl.where(raw < -PENALTY_LIMIT, -PENALTY, 0.0))
        ds += tl.where(in_m[:, None] & in_n[None, :], pen, 0.0)
    return ds


@triton.jit
def skew_piece(ds, piece: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, NW: tl.constexpr):
    """Columns piece*NW .. piece*NW+NW-1 of the (BM, BM+BN-1) offset-coordinate form of a (BM, BN)
    tile: out[a, w] = ds[a, piece*NW + w + a - (BM-1)], zero outside the tile. Offset column w of
    the tile at (m0, n0) is pos row (T-1) - (m0+BM-1) + n0 + w for every row a."""
    a = tl.arange(0, BM)[:, None]
    col = piece * NW + tl.arange(0, NW)[None, :] + a - (BM - 1)
    ok = (col >= 0) & (col < BN)
    g = tl.gather(ds, tl.minimum(tl.maximum(col, 0), BN - 1), axis=1)
    return tl.where(ok, g, 0.0)
