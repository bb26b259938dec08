"""The 2-D log-semiring DP behind every (pruned) RNN-T loss: k2's `mutual_information_recursion`.

Lattice node (s, t) = "s symbols emitted, at frame t"; p has shape (B, S+1, T+1).
px[b, s, t] is the log-weight of the symbol arc leaving (s, t), py[b, s, t] that of the blank arc.

  regular  (px: (B, S, T+1)):  p[s,t] = (p[s-1,t]   + px[s-1,t])   ⊕ (p[s,t-1] + py[s,t-1])
  modified (px: (B, S, T)):    p[s,t] = (p[s-1,t-1] + px[s-1,t-1]) ⊕ (p[s,t-1] + py[s,t-1])

with ⊕ = logaddexp, out-of-range terms = -inf, p[s_begin, t_begin] = 0, result p[s_end, t_end]
(`boundary` rows are [s_begin, t_begin, s_end, t_end], default [0, 0, S, T]). The topology is
detected from shapes exactly as k2 does (px.shape[-1] == py.shape[-1] means "modified").

Implementation: an anti-diagonal wavefront. All cells with s + t = k depend only on diagonals
k-1 (and k-2 for modified), so the DP is S+T+1 sequential steps, each one vectorised over
(B, S+1). The lattice is stored "skewed" (B, K, S+1) with K = S+T+1 so one diagonal is a
contiguous row. The backward pass is an autograd.Function that runs the beta (suffix) recursion
the same way and forms arc occupation posteriors exp(alpha + arc + beta - total): these are both
the exact gradient of the total w.r.t. px/py and what k2 calls `return_grad` (input for the
pruning bounds). -inf cells give exactly zero gradient, never NaN.

Backends (zipformer_fast.runtime): CUDA tensors use the Triton kernels of
kernels/mutual_information.py (one launch per sweep instead of ~4 per diagonal) unless the backend
is "reference" or triton is missing; CPU tensors use the torch wavefront, except under
`configure(backend="triton")` with TRITON_INTERPRET=1 (how the tests run the kernels without a GPU).
With `configure(k2=True)` (env ZIPFORMER_FAST_USE_K2=1), k2's own implementation is called instead,
for users who have a working k2 (it is not installable next to modern torch from PyPI).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor

from ..runtime import get_backend, k2_enabled, triton_available, triton_interpret
from ._registry import kernels

NEG_INF = float("-inf")


def _check_inputs(px: Tensor, py: Tensor, boundary: Optional[Tensor]) -> bool:
    """Validates shapes/dtypes; returns True for the modified topology."""
    if px.ndim != 3 or py.ndim != 3:
        raise ValueError(f"px and py must be 3-D, got {tuple(px.shape)} and {tuple(py.shape)}")
    B, S, T1 = px.shape
    T = py.shape[-1]
    if T1 not in (T, T + 1):
        raise ValueError(f"px.shape[-1] must be T or T+1 with T = py.shape[-1] = {T}, got {T1}")
    if tuple(py.shape) != (B, S + 1, T):
        raise ValueError(f"py must have shape (B, S+1, T) = {(B, S + 1, T)}, got {tuple(py.shape)}")
    if px.dtype != py.dtype or not px.dtype.is_floating_point:
        raise ValueError(f"px and py must share one floating dtype, got {px.dtype} / {py.dtype}")
    if px.device != py.device:
        raise ValueError("px and py must be on the same device")
    if boundary is not None:
        if boundary.dtype != torch.int64 or tuple(boundary.shape) != (B, 4):
            raise ValueError(f"boundary must be int64 of shape (B, 4) = ({B}, 4), got "
                             f"{boundary.dtype} {tuple(boundary.shape)}")
        sb, tb, se, te = boundary.unbind(1)
        ok = (sb >= 0) & (sb <= se) & (se <= S) & (tb >= 0) & (tb <= te) & (te <= T)
        if not bool(ok.all()):  # one host sync, as k2's validation loop
            bad = (~ok).nonzero()[0, 0].item()
            raise ValueError(f"boundary row {bad} = {boundary[bad].tolist()} violates "
                             f"0 <= s_begin <= s_end <= S={S} and 0 <= t_begin <= t_end <= T={T}")
    return T1 == T


def _skew_index(S1: int, T1: int, device) -> Tuple[Tensor, Tensor]:
    """For skewed (k, s) -> t = k - s, clamped, and whether (s, t) is inside the grid."""
    K = S1 + T1 - 1
    k = torch.arange(K, device=device).unsqueeze(0)  # (1, K)
    s = torch.arange(S1, device=device).unsqueeze(1)  # (S1, 1)
    t = k - s  # (S1, K)
    valid = (t >= 0) & (t < T1)
    return t.clamp(0, T1 - 1), valid


def _skew(grid: Tensor, t_idx: Tensor, valid: Tensor) -> Tensor:
    """(B, S1, T1) grid -> (B, K, S1) skewed with d[b, k, s] = grid[b, s, k - s] (-inf outside)."""
    B = grid.shape[0]
    d = torch.gather(grid, 2, t_idx.unsqueeze(0).expand(B, -1, -1))
    d = d.masked_fill(~valid, NEG_INF)
    return d.transpose(1, 2).contiguous()


def _unskew(d: Tensor, T1: int) -> Tensor:
    """(B, K, S1) skewed -> (B, S1, T1) grid: grid[b, s, t] = d[b, s + t, s]."""
    B, K, S1 = d.shape
    idx = torch.arange(S1, device=d.device).unsqueeze(1) + torch.arange(T1, device=d.device)
    return torch.gather(d.transpose(1, 2), 2, idx.unsqueeze(0).expand(B, -1, -1))


def _seed_masks(boundary: Tensor, S1: int, col: int, device):
    """Per-diagonal masks of the start (col=0: begin) or end (col=2) cell of each sequence:
    a dict diagonal k -> (B, S1) bool mask (one host sync to list the distinct diagonals)."""
    s_cell, t_cell = boundary[:, col], boundary[:, col + 1]
    k_cell = s_cell + t_cell
    masks = {}
    s_ar = torch.arange(S1, device=device)
    for k in sorted(set(k_cell.tolist())):
        masks[k] = (k_cell == k).unsqueeze(1) & (s_ar.unsqueeze(0) == s_cell.unsqueeze(1))
    return masks


def _alpha(PXs: Tensor, PYs: Tensor, modified: bool, start_masks) -> Tensor:
    """Forward (prefix) scores in skewed layout, (B, K+2, S1+1).

    Diagonal k lives at row k+2 (two leading -inf rows: predecessors of k = 0, 1); s lives at
    column s+1 (column 0 is a permanent -inf guard, so "s-1" of s = 0 reads -inf)."""
    B, K, S1 = PYs.shape
    A = PYs.new_full((B, K + 2, S1 + 1), NEG_INF)
    lag = 2 if modified else 1  # the symbol arc comes from diagonal k-1 (regular) / k-2 (modified)
    # PXsh[:, k, s] = PXs[:, k, s-1]: the weight of the symbol arc that *enters* column s.
    PXsh = torch.cat([PXs.new_full((B, K, 1), NEG_INF), PXs[:, :, :-1]], dim=2)
    for k in range(K):
        sym = A[:, k + 2 - lag, :S1] + PXsh[:, k - lag, :] if k >= lag else None
        blank = A[:, k + 1, 1:] + PYs[:, k - 1, :] if k >= 1 else None
        out = A[:, k + 2, 1:]
        if sym is not None and blank is not None:
            torch.logaddexp(sym, blank, out=out)
        elif blank is not None:
            out.copy_(blank)
        if start_masks is None:
            if k == 0:
                A[:, 2, 1] = 0.0
        elif k in start_masks:
            out.masked_fill_(start_masks[k], 0.0)
    return A


def _beta(PXs: Tensor, PYs: Tensor, modified: bool, end_masks, K_end: int) -> Tensor:
    """Backward (suffix) scores, (B, K+2, S1+1): diagonal k at row k, s at column s; rows K, K+1
    and column S1 are -inf guards."""
    B, K, S1 = PYs.shape
    Bt = PYs.new_full((B, K + 2, S1 + 1), NEG_INF)
    lag = 2 if modified else 1
    for k in range(K - 1, -1, -1):
        out = Bt[:, k, :S1]
        torch.logaddexp(PXs[:, k, :] + Bt[:, k + lag, 1:], PYs[:, k, :] + Bt[:, k + 1, :S1], out=out)
        if end_masks is None:
            if k == K_end:
                Bt[:, k, S1 - 1] = 0.0
        elif k in end_masks:
            out.masked_fill_(end_masks[k], 0.0)
    return Bt


def _lattices(px: Tensor, py: Tensor):
    """Pads px, py to a common (B, S1, T+1) grid (-inf = no arc) and skews them."""
    B, S, _ = px.shape
    T = py.shape[-1]
    S1, T1 = S + 1, T + 1
    PX = px.new_full((B, S1, T1), NEG_INF)
    PX[:, :S, : px.shape[-1]] = px
    PY = py.new_full((B, S1, T1), NEG_INF)
    PY[:, :, :T] = py
    t_idx, valid = _skew_index(S1, T1, px.device)
    return _skew(PX, t_idx, valid), _skew(PY, t_idx, valid)


def _forward_and_grads(px: Tensor, py: Tensor, boundary: Optional[Tensor], modified: bool,
                       need_grads: bool):
    B, S, _ = px.shape
    T = py.shape[-1]
    S1 = S + 1
    PXs, PYs = _lattices(px, py)
    K = PYs.shape[1]
    default_start = boundary is None or not bool((boundary[:, :2] != 0).any())
    start_masks = None if default_start else _seed_masks(boundary, S1, 0, px.device)
    A = _alpha(PXs, PYs, modified, start_masks)
    if boundary is None:
        s_end = torch.full((B,), S, dtype=torch.int64, device=px.device)
        t_end = torch.full((B,), T, dtype=torch.int64, device=px.device)
    else:
        s_end, t_end = boundary[:, 2], boundary[:, 3]
    b_idx = torch.arange(B, device=px.device)
    total = A[b_idx, s_end + t_end + 2, s_end + 1]
    if not need_grads:
        return total, None, None

    default_end = boundary is None or bool(((s_end == S) & (t_end == T)).all())
    end_masks = None if default_end else _seed_masks(boundary, S1, 2, px.device)
    Bt = _beta(PXs, PYs, modified, end_masks, K - 1)
    alpha = A[:, 2:, 1:]  # (B, K, S1)
    lag = 2 if modified else 1
    finite = torch.isfinite(total).view(B, 1, 1)
    tot = torch.where(finite, total.view(B, 1, 1), torch.zeros_like(total).view(B, 1, 1))
    # Occupation posteriors. exp(-inf) = 0 gives exact zeros for impossible arcs; sequences whose
    # total is -inf (no path) get zero gradient, like k2's "safe exp".
    gx = torch.exp(alpha + PXs + Bt[:, lag:K + lag, 1:] - tot)
    gy = torch.exp(alpha + PYs + Bt[:, 1:K + 1, :S1] - tot)
    gx = torch.where(finite, gx, torch.zeros_like(gx)).nan_to_num_(0.0)
    gy = torch.where(finite, gy, torch.zeros_like(gy)).nan_to_num_(0.0)
    px_grad = _unskew(gx, T + 1)[:, :S, : px.shape[-1]].contiguous()
    py_grad = _unskew(gy, T + 1)[:, :, :T].contiguous()
    return total, px_grad, py_grad


def _use_triton(px: Tensor) -> bool:
    name = get_backend()
    if name == "reference" or not triton_available():
        return False  # configure(backend="triton") already raised when triton is missing
    if px.is_cuda:
        return kernels("mutual_information").supported(px.shape[1])
    return name == "triton" and triton_interpret()


class _MutualInformation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, px, py, boundary, return_grad, grads_out: list):
        modified = px.shape[-1] == py.shape[-1]
        need = return_grad or px.requires_grad or py.requires_grad
        with torch.no_grad():
            if _use_triton(px):
                if boundary is None:
                    B, S, T = px.shape[0], px.shape[1], py.shape[-1]
                    boundary = torch.tensor([0, 0, S, T], device=px.device).expand(B, 4)
                total, px_grad, py_grad = kernels("mutual_information").forward_and_grads(
                    px.detach(), py.detach(), boundary, need)
            else:
                total, px_grad, py_grad = _forward_and_grads(px.detach(), py.detach(), boundary,
                                                             modified, need)
        # The occupation probabilities are d(sum_b total_b)/d(px, py): the real backward only
        # rescales them per sequence, so nothing else is saved.
        ctx.save_for_backward(px_grad, py_grad)
        grads_out.extend([px_grad, py_grad])
        return total

    @staticmethod
    def backward(ctx, ans_grad):
        px_grad, py_grad = ctx.saved_tensors
        g = ans_grad.view(-1, 1, 1)
        return px_grad * g, py_grad * g, None, None, None


def mutual_information_recursion(
    px: Tensor, py: Tensor, boundary: Optional[Tensor] = None, return_grad: bool = False
) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    """Total log-score p[b, s_end, t_end] of the lattice, shape (B,), differentiable in px, py.

    Args:
      px: (B, S, T+1) regular or (B, S, T) modified/constrained, log-weights of symbol arcs.
      py: (B, S+1, T), log-weights of blank (next-frame) arcs.
      boundary: optional int64 (B, 4) rows [s_begin, t_begin, s_end, t_end].
      return_grad: also return (px_grad, py_grad) = d(sum of totals)/d(px, py), i.e. the arc
        occupation probabilities (detached), as k2 does for the pruning bounds.
    Runs in fp32 (or fp64 if given fp64) with autocast disabled; half inputs are upcast.
    """
    _check_inputs(px, py, boundary)
    if k2_enabled():
        try:
            import k2
        except ImportError as e:
            raise ImportError("ZIPFORMER_FAST_USE_K2=1 but k2 does not import "
                              f"({e}); unset it to use the built-in recursion") from e
        return k2.mutual_information_recursion(px, py, boundary, return_grad=return_grad)
    if px.dtype in (torch.float16, torch.bfloat16):
        px, py = px.float(), py.float()
    grads: List[Tensor] = []
    with torch.autocast(device_type=px.device.type, enabled=False):
        total = _MutualInformation.apply(px, py, boundary, return_grad, grads)
    if return_grad:
        return total, (grads[0], grads[1])
    return total
