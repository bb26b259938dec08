"""Pruned RNN-T losses, a pure-PyTorch re-implementation of k2's `rnnt_loss.py` (same names,
arguments and semantics; k2 itself cannot be installed next to modern torch).

  get_rnnt_logprobs / rnnt_loss_simple      additive ("simple") joiner: logit = am[t] + lm[s]
  get_rnnt_logprobs_smoothed / rnnt_loss_smoothed   + LM-only and AM-only (unigram) interpolation
  get_rnnt_logprobs_joint / rnnt_loss       full (unpruned) joiner output (B, T, S+1, C)
  get_rnnt_prune_ranges, do_rnnt_pruning    pruning bounds from the occupation probabilities
  get_rnnt_logprobs_pruned / rnnt_loss_pruned   joiner output only inside the bounds (B, T, R, C)

`rnnt_type`: "regular" (any number of symbols per frame), "modified" (at most one symbol per frame,
a symbol also consumes the frame), "constrained" (modified topology, a symbol is additionally
charged the blank probability of the new context on the same frame). `boundary` is int64 (B, 4)
= [s_begin, t_begin, s_end, t_end] (icefall: [0, 0, y_len, T_b]); `symbols` are padded with any
valid id (0 is fine). Losses are -log P, reduction "none" (B,) | "mean" | "sum".

All log-prob arithmetic runs in fp32 (fp64 kept if given) with autocast disabled.
Deviations from k2, on purpose: errors are ValueError with a message instead of bare asserts; an
all-empty batch (S = 0) gets the exact one-position range from get_rnnt_prune_ranges instead of
k2's assertion. Like k2: modified/constrained with T_b < S_b raises ValueError ("requires
T >= S"); a sequence with no surviving path (too narrow ranges) gives loss = inf and zero grads.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..ops.mutual_information import mutual_information_recursion

RNNT_TYPES = ("regular", "modified", "constrained")
NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _fp32_region(device: torch.device):
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _to_float(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_type(rnnt_type: str) -> None:
    if rnnt_type not in RNNT_TYPES:
        raise ValueError(f"rnnt_type={rnnt_type!r}: expected one of {RNNT_TYPES}")


def _check_symbols(symbols: Tensor, B: int, S: int, C: int) -> None:
    if symbols.dtype != torch.int64 or tuple(symbols.shape) != (B, S):
        raise ValueError(f"symbols must be int64 of shape (B, S) = {(B, S)}, got "
                         f"{symbols.dtype} {tuple(symbols.shape)}")
    if symbols.numel():
        lo, hi = torch.stack([symbols.min(), symbols.max()]).tolist()  # one host sync
        if lo < 0 or hi >= C:
            raise ValueError(f"symbols must lie in [0, {C}) (pad with 0, not -1)")


def _validate_st_lengths(S: int, T: int, rnnt_type: str, boundary: Optional[Tensor]) -> None:
    if rnnt_type == "regular":
        return
    if boundary is None:
        if T < S:
            raise ValueError(f"the {rnnt_type} transducer requires T >= S, got T={T}, S={S}")
    else:
        s_len, t_len = boundary[:, 2] - boundary[:, 0], boundary[:, 3] - boundary[:, 1]
        if bool((t_len < s_len).any()):
            b = int((t_len < s_len).nonzero()[0, 0])
            raise ValueError(f"the {rnnt_type} transducer requires T >= S per sequence; "
                             f"row {b} has T={int(t_len[b])}, S={int(s_len[b])}")


def fix_for_boundary(px: Tensor, boundary: Optional[Tensor] = None) -> Tensor:
    """Regular topology: no symbol may be emitted on frame t_end (the one-past-last frame):
    writes -inf into px[b, :, boundary[b, 3]] (out of place, so autograd sees it)."""
    if boundary is None:
        return px
    B, S, _ = px.shape
    idx = boundary[:, 3].reshape(B, 1, 1).expand(B, S, 1)
    return px.scatter(2, idx, NEG_INF)


def _finish_px(px: Tensor, py: Tensor, rnnt_type: str, boundary: Optional[Tensor]) -> Tensor:
    """Shared tail of every get_rnnt_logprobs_*: the regular extra column / constrained term."""
    if rnnt_type == "regular":
        B, S, T = px.shape
        px = torch.cat([px, px.new_full((B, S, 1), NEG_INF)], dim=2)  # no symbol after frame T-1
        return fix_for_boundary(px, boundary)
    if rnnt_type == "constrained":
        px = px + py[:, 1:, :]  # blank of the new context s+1 on the same frame
    return px


def _delay_penalty(px: Tensor, delay_penalty: float, boundary: Optional[Tensor], T: int) -> Tensor:
    """k2's delay penalty: px[b, s, t] += λ ((T_b - 1)/2 - t), rewarding early emission."""
    if delay_penalty == 0.0:
        return px
    B = px.shape[0]
    T_b = (boundary[:, 3] if boundary is not None else torch.full((B,), T, device=px.device))
    t = torch.arange(px.shape[-1], device=px.device, dtype=px.dtype)
    offset = (T_b.to(px.dtype).reshape(B, 1) - 1) / 2 - t  # (B, T or T+1)
    return px + delay_penalty * offset.unsqueeze(1)


def _reduce(neg_loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return -neg_loss
    if reduction == "mean":
        return -neg_loss.mean()
    if reduction == "sum":
        return -neg_loss.sum()
    raise ValueError(f"reduction={reduction!r}: expected 'none', 'mean' or 'sum'")


def _run(px, py, boundary, delay_penalty, reduction, return_grad, T):
    px = _delay_penalty(px, delay_penalty, boundary, T)
    out = mutual_information_recursion(px, py, boundary, return_grad=return_grad)
    if return_grad:
        scores, grads = out
        return _reduce(scores, reduction), grads
    return _reduce(out, reduction)


def _check_lm_am(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int):
    if lm.ndim != 3 or am.ndim != 3 or lm.shape[0] != am.shape[0] or lm.shape[2] != am.shape[2]:
        raise ValueError(f"lm must be (B, S+1, C) and am (B, T, C); got {tuple(lm.shape)} and "
                         f"{tuple(am.shape)}")
    B, T, C = am.shape
    S = lm.shape[1] - 1
    _check_symbols(symbols, B, S, C)
    if not 0 <= termination_symbol < C:
        raise ValueError(f"termination_symbol={termination_symbol} outside [0, {C})")
    return B, S, T, C


# ------------------------------------------------------------------------- simple (additive) joiner
def _simple_parts(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int):
    """Pieces of the additive joiner shared by the simple and smoothed lattices."""
    B, T, C = am.shape
    S = lm.shape[1] - 1
    # Max-subtraction keeps exp() in range; log N = log sum_c exp(lm[s,c] + am[t,c]) is then one
    # batched matmul (B,S+1,C)x(B,C,T) instead of a (B,S+1,T,C) tensor. tiny avoids log(0).
    am_max = am.max(dim=2, keepdim=True).values  # (B, T, 1)
    lm_max = lm.max(dim=2, keepdim=True).values  # (B, S+1, 1)
    am_probs = (am - am_max).exp()
    lm_probs = (lm - lm_max).exp()
    tiny = torch.finfo(am.dtype).tiny
    norm = (torch.matmul(lm_probs, am_probs.transpose(1, 2)) + tiny).log()
    norm = norm + lm_max + am_max.transpose(1, 2)  # (B, S+1, T)
    px_am = torch.gather(am, 2, symbols.unsqueeze(1).expand(B, T, S)).transpose(1, 2)  # (B,S,T)
    px_lm = torch.gather(lm[:, :S], 2, symbols.unsqueeze(-1))  # (B, S, 1)
    py_am = am[:, :, termination_symbol].unsqueeze(1)  # (B, 1, T)
    py_lm = lm[:, :, termination_symbol].unsqueeze(2)  # (B, S+1, 1)
    return dict(am_max=am_max, lm_max=lm_max, am_probs=am_probs, lm_probs=lm_probs, norm=norm,
                px_am=px_am, px_lm=px_lm, py_am=py_am, py_lm=py_lm)


def get_rnnt_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                      rnnt_type: str = "regular", boundary: Optional[Tensor] = None
                      ) -> Tuple[Tensor, Tensor]:
    """(px, py) of the additive joiner: px (B,S,T+1) regular / (B,S,T) otherwise, py (B,S+1,T)."""
    _check_type(rnnt_type)
    B, S, T, C = _check_lm_am(lm, am, symbols, termination_symbol)
    _validate_st_lengths(S, T, rnnt_type, boundary)
    p = _simple_parts(lm, am, symbols, termination_symbol)
    px = p["px_am"] + p["px_lm"] - p["norm"][:, :S, :]
    py = p["py_am"] + p["py_lm"] - p["norm"]
    return _finish_px(px, py, rnnt_type, boundary), py


def rnnt_loss_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                     boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
                     delay_penalty: float = 0.0, reduction: str = "mean",
                     return_grad: bool = False) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """RNN-T loss with the additive joiner am[b,t,:] + lm[b,s,:]. With return_grad, also returns
    (px_grad, py_grad): occupation probabilities for get_rnnt_prune_ranges."""
    with _fp32_region(am.device):
        lm, am = _to_float(lm), _to_float(am)
        px, py = get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)
        return _run(px, py, boundary, delay_penalty, reduction, return_grad, am.shape[1])


def get_rnnt_logprobs_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                               lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                               boundary: Optional[Tensor] = None, rnnt_type: str = "regular"
                               ) -> Tuple[Tensor, Tensor]:
    """(1 - a - b)·combined + a·LM-only + b·AM-only(unigram LM) lattices, element-wise on px, py."""
    _check_type(rnnt_type)
    B, S, T, C = _check_lm_am(lm, am, symbols, termination_symbol)
    _validate_st_lengths(S, T, rnnt_type, boundary)
    p = _simple_parts(lm, am, symbols, termination_symbol)
    tiny = torch.finfo(am.dtype).tiny
    lm_only_norm = p["lm_probs"].sum(dim=2, keepdim=True)  # (B, S+1, 1), relative to lm_max
    # Unigram over all (b, s) positions, padded ones included (as k2).
    unigram = (p["lm_probs"] / lm_only_norm).mean(dim=(0, 1)) + tiny  # (C,)
    am_only_norm = (torch.mv(p["am_probs"].reshape(-1, C), unigram).reshape(B, 1, T).log()
                    + p["am_max"].transpose(1, 2))  # (B, 1, T)
    log_unigram = unigram.log()
    lm_only_norm = lm_only_norm.log() + p["lm_max"]  # (B, S+1, 1)

    px = p["px_am"] + p["px_lm"] - p["norm"][:, :S, :]
    py = p["py_am"] + p["py_lm"] - p["norm"]
    px_lm_only = p["px_lm"] - lm_only_norm[:, :S]  # (B, S, 1), broadcast over t
    py_lm_only = p["py_lm"] - lm_only_norm  # (B, S+1, 1)
    px_am_only = p["px_am"] + log_unigram[symbols].unsqueeze(-1) - am_only_norm
    py_am_only = p["py_am"] + log_unigram[termination_symbol] - am_only_norm  # (B, 1, T)

    combined_scale = 1.0 - lm_only_scale - am_only_scale
    # An exact 0 would turn 0 * (-inf) into NaN in padded cells.
    lm_only_scale = lm_only_scale if lm_only_scale != 0.0 else 1e-20
    am_only_scale = am_only_scale if am_only_scale != 0.0 else 1e-20
    px = px * combined_scale + px_lm_only * lm_only_scale + px_am_only * am_only_scale
    py = py * combined_scale + py_lm_only * lm_only_scale + py_am_only * am_only_scale
    return _finish_px(px, py, rnnt_type, boundary), py


def rnnt_loss_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                       lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                       boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
                       delay_penalty: float = 0.0, reduction: str = "mean",
                       return_grad: bool = False
                       ) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Smoothed simple loss (icefall: lm_only_scale=0.25, am_only_scale=0, return_grad=True)."""
    with _fp32_region(am.device):
        lm, am = _to_float(lm), _to_float(am)
        px, py = get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol, lm_only_scale,
                                            am_only_scale, boundary, rnnt_type)
        return _run(px, py, boundary, delay_penalty, reduction, return_grad, am.shape[1])


# ------------------------------------------------------------------------------ full joiner output
def get_rnnt_logprobs_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                            boundary: Optional[Tensor] = None, rnnt_type: str = "regular"
                            ) -> Tuple[Tensor, Tensor]:
    """(px, py) from the full joiner output logits (B, T, S+1, C)."""
    _check_type(rnnt_type)
    if logits.ndim != 4:
        raise ValueError(f"logits must be (B, T, S+1, C), got {tuple(logits.shape)}")
    B, T, S1, C = logits.shape
    S = S1 - 1
    _check_symbols(symbols, B, S, C)
    _validate_st_lengths(S, T, rnnt_type, boundary)
    norm = torch.logsumexp(logits, dim=3).permute(0, 2, 1)  # (B, S+1, T)
    px = torch.gather(logits[:, :, :S, :], 3,
                      symbols.reshape(B, 1, S, 1).expand(B, T, S, 1)).squeeze(3)
    px = px.permute(0, 2, 1) - norm[:, :S, :]
    py = logits[:, :, :, termination_symbol].permute(0, 2, 1) - norm
    return _finish_px(px, py, rnnt_type, boundary), py


def rnnt_loss(logits: Tensor, symbols: Tensor, termination_symbol: int,
              boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
              delay_penalty: float = 0.0, reduction: str = "mean") -> Tensor:
    """Full (unpruned) RNN-T loss; regular == torchaudio.functional.rnnt_loss(blank=termination)."""
    with _fp32_region(logits.device):
        logits = _to_float(logits)
        px, py = get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary, rnnt_type)
        return _run(px, py, boundary, delay_penalty, reduction, False, logits.shape[1])


# ----------------------------------------------------------------------------------------- pruning
def _adjust_pruning_lower_bound(s_begin: Tensor, k: int) -> Tensor:
    """Make window starts non-decreasing, start at 0, and advance by at most k-1 per frame.

    Reverse cumulative minimum gives monotonicity; the same trick on u[t] = (k-1)t - s_begin[t]
    bounds the step (u non-decreasing <=> s_begin[t+1] - s_begin[t] <= k-1); clamping u >= 0
    forces s_begin <= (k-1)t, hence s_begin[0] = 0."""
    def rev_cummin(x: Tensor) -> Tensor:
        return torch.flip(torch.cummin(torch.flip(x, (-1,)), dim=-1).values, (-1,))

    T = s_begin.shape[-1]
    ramp = (k - 1) * torch.arange(T, device=s_begin.device)
    s_begin = rev_cummin(s_begin)
    u = rev_cummin(ramp - s_begin).clamp_(min=0)
    return ramp - u


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor,
                          s_range: int) -> Tensor:
    """Pruning bounds (B, T, R) int64 from occupation probabilities (k2's current method,
    Pruned RNN-T paper §3.2): on each frame keep the R consecutive positions [σ, σ+R) maximising
    sum_{s in window} py_grad[s, t] - px_grad[σ-1, t] (probability that the frame's run of
    nodes lies inside the window), then repair σ to be monotonic and skip-free."""
    B, S, T1 = px_grad.shape
    T = py_grad.shape[-1]
    if T1 not in (T, T + 1) or tuple(py_grad.shape) != (B, S + 1, T):
        raise ValueError(f"px_grad {tuple(px_grad.shape)} / py_grad {tuple(py_grad.shape)} do not "
                         f"form a lattice")
    if boundary is None or tuple(boundary.shape) != (B, 4):
        raise ValueError("boundary (B, 4) is required")
    regular = T1 == T + 1
    S1 = S + 1
    if S == 0:  # all transcripts empty: the only position is 0 (k2 asserts here instead)
        return torch.zeros((B, T, 1), dtype=torch.int64, device=px_grad.device)
    if regular:
        # The window start moves at most R-1 per frame, so R-1 >= ceil(S_b / T_b) is needed.
        t_len = boundary[:, 3].clamp(min=1)
        s_min = int((torch.div(boundary[:, 2] - 1, t_len, rounding_mode="trunc") + 2).max())
        if s_range < s_min:
            warnings.warn(f"s_range={s_range} is too small for this batch (needs >= {s_min} "
                          f"because some T_b < S_b); using {s_min}")
            s_range = s_min
    if s_range > S:
        s_range = S1  # no pruning
    if s_range < (2 if regular else 1):
        raise ValueError(f"s_range={s_range}: the {'regular' if regular else 'modified'} RNN-T "
                         f"needs >= {2 if regular else 1}, or no path survives pruning")
    R = s_range
    n_start = S1 - R + 1
    # Window sums over s of py_grad, via a cumulative sum: (B, n_start, T).
    csum = torch.cat([py_grad.new_zeros((B, 1, T)), py_grad.cumsum(dim=1)], dim=1)
    win = csum[:, R:R + n_start] - csum[:, :n_start]
    enter = torch.cat([px_grad.new_zeros((B, 1, T1)), px_grad], dim=1)[:, :n_start, :T]
    s_begin = torch.argmax(win - enter, dim=1)  # (B, T)
    # From the last valid frame on, force the window that contains s_end = S_b.
    t_ar = torch.arange(T, device=px_grad.device).unsqueeze(0)
    keep = t_ar < (boundary[:, 3:4] - 1)
    s_last = (boundary[:, 2:3] - R + 1).clamp(min=0)
    s_begin = torch.where(keep, s_begin, s_last)
    s_begin = _adjust_pruning_lower_bound(s_begin, R if regular else 2)
    return s_begin.unsqueeze(2) + torch.arange(R, device=px_grad.device)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    """am (B,T,Da) -> (B,T,R,Da) (an expanded view); lm (B,S+1,Dl) gathered -> (B,T,R,Dl)."""
    B, T, R = ranges.shape
    if am.shape[:2] != (B, T) or lm.shape[0] != B:
        raise ValueError(f"am {tuple(am.shape)} / lm {tuple(lm.shape)} do not match ranges "
                         f"{tuple(ranges.shape)}")
    D = lm.shape[2]
    am_pruned = am.unsqueeze(2).expand(B, T, R, am.shape[-1])
    idx = ranges.reshape(B, T * R, 1).expand(B, T * R, D)
    lm_pruned = torch.gather(lm, 1, idx).reshape(B, T, R, D)
    return am_pruned, lm_pruned


def get_rnnt_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor,
                             termination_symbol: int, boundary: Optional[Tensor] = None,
                             rnnt_type: str = "regular") -> Tuple[Tensor, Tensor]:
    """(px, py) of the full lattice from pruned logits (B, T, R, C); cells outside the ranges
    are -inf. Column j of frame t belongs to lattice position ranges[b, t, j]."""
    _check_type(rnnt_type)
    if logits.ndim != 4 or tuple(ranges.shape) != tuple(logits.shape[:3]):
        raise ValueError(f"logits {tuple(logits.shape)} must be (B, T, R, C) with ranges "
                         f"(B, T, R), got ranges {tuple(ranges.shape)}")
    B, T, R, C = logits.shape
    S = symbols.shape[1]
    _check_symbols(symbols, B, S, C)
    _validate_st_lengths(S, T, rnnt_type, boundary)
    norm = torch.logsumexp(logits, dim=3)  # (B, T, R)
    sym_term = torch.cat([symbols, symbols.new_full((B, 1), termination_symbol)], dim=1)
    pruned_sym = torch.gather(sym_term.unsqueeze(1).expand(B, T, S + 1), 2, ranges)
    px_r = torch.gather(logits, 3, pruned_sym.unsqueeze(3)).squeeze(3) - norm
    py_r = logits[..., termination_symbol] - norm
    # Scatter the R columns to their lattice positions (ranges never exceed S, so this equals
    # k2's pad-and-roll).
    full = logits.new_full((B, T, S + 1), NEG_INF)
    px = full.scatter(2, ranges, px_r)[:, :, :S].permute(0, 2, 1)  # (B, S, T)
    py = full.scatter(2, ranges, py_r).permute(0, 2, 1)  # (B, S+1, T)
    return _finish_px(px, py, rnnt_type, boundary), py


def rnnt_loss_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                     boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
                     delay_penalty: float = 0.0, reduction: str = "mean") -> Tensor:
    """RNN-T loss from the pruned joiner output (B, T, R, C) and its ranges (B, T, R)."""
    with _fp32_region(logits.device):
        logits = _to_float(logits)
        px, py = get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary,
                                          rnnt_type)
        return _run(px, py, boundary, delay_penalty, reduction, False, logits.shape[1])
