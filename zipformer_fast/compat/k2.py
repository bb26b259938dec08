"""k2-free stand-ins for the k2 functions icefall's Zipformer recipe calls, with k2's signatures.

    import sys, zipformer_fast.compat.k2 as k2_compat
    sys.modules["k2"] = k2_compat          # or k2_compat.install(), before icefall is imported

Provided (built on zipformer_fast.ops.swoosh and zipformer_fast.asr.rnnt_loss /
mutual_information; no k2 needed):
  swoosh_l, swoosh_r (x, dropout_prob=0.0), swoosh_l_forward, swoosh_r_forward,
  swoosh_l_forward_and_deriv, swoosh_r_forward_and_deriv,
  rnnt_loss_simple, rnnt_loss_smoothed, rnnt_loss, rnnt_loss_pruned,
  get_rnnt_prune_ranges, do_rnnt_pruning (+ get_rnnt_logprobs, get_rnnt_logprobs_smoothed,
  get_rnnt_logprobs_joint, get_rnnt_logprobs_pruned, mutual_information_recursion).
k2's semantics: Swoosh outputs are float32 whatever the input dtype (k2 converts); swoosh_l/_r
keep k2's 8-bit stochastically rounded derivative for backward; delay_penalty acts only when > 0;
reduction "none" | "mean" (mean over the batch) | "sum".
Differences: in swoosh_l/_r with dropout_prob > 0 a dropped element's gradient is exactly 0 (k2
stores a stochastically rounded ~0); `rnnt_loss_pruned(use_hat_loss=True)` raises
NotImplementedError; errors are ValueError with a message instead of k2's asserts.
Also a two-axis RaggedTensor and ragged.cat (compat/k2_ragged.py: what icefall's training path
does with its targets) and a `version` module (icefall.env reads it).
Not provided: FSAs, general ragged ops, CTC graphs, lattice decoding (icefall's beam searches use
k2 ragged ops); any other attribute resolves to a placeholder that raises NotImplementedError when
called or instantiated (so modules that only mention k2.Fsa in annotations still import).
"""
from __future__ import annotations

import sys
import types
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from ..asr import rnnt_loss as _rnnt
from ..ops.mutual_information import mutual_information_recursion as _mi
from ..ops import swoosh as _swoosh
from . import k2_ragged as ragged
from .k2_ragged import RaggedShape, RaggedTensor

__all__ = [
    "swoosh_l", "swoosh_r", "swoosh_l_forward", "swoosh_r_forward", "swoosh_l_forward_and_deriv",
    "swoosh_r_forward_and_deriv", "rnnt_loss_simple", "rnnt_loss_smoothed", "rnnt_loss",
    "rnnt_loss_pruned", "get_rnnt_prune_ranges", "do_rnnt_pruning", "get_rnnt_logprobs",
    "get_rnnt_logprobs_smoothed", "get_rnnt_logprobs_joint", "get_rnnt_logprobs_pruned",
    "mutual_information_recursion", "install", "RaggedTensor", "RaggedShape", "ragged", "version",
]


# ------------------------------------------------------------------------------------- Swoosh
def _swoosh_with_dropout(x: Tensor, shift: float, offset: float, dropout_prob: float) -> Tensor:
    if not 0.0 <= dropout_prob < 1.0:
        raise ValueError(f"dropout_prob={dropout_prob} must be in [0, 1)")
    xf = x.float()  # k2 computes and returns float32
    if not xf.requires_grad:
        return _swoosh.swoosh(xf, shift, offset)  # k2: no dropout without requires_grad
    y = _swoosh.swoosh(xf, shift, offset, compact_derivative=True)
    if dropout_prob != 0.0:
        keep = torch.rand_like(y) >= dropout_prob
        y = y * keep * (1.0 / (1.0 - dropout_prob))
    return y


def swoosh_l(x: Tensor, dropout_prob: float = 0.0) -> Tensor:
    """log(1 + exp(x-4)) - 0.08x - 0.035 (float32), derivative kept in 8 bits for backward;
    with x.requires_grad, optional dropout (scaled by 1/(1-p))."""
    return _swoosh_with_dropout(x, _swoosh.SWOOSH_L_SHIFT, _swoosh.SWOOSH_L_OFFSET, dropout_prob)


def swoosh_r(x: Tensor, dropout_prob: float = 0.0) -> Tensor:
    """log(1 + exp(x-1)) - 0.08x - 0.313261687 (float32); as swoosh_l otherwise."""
    return _swoosh_with_dropout(x, _swoosh.SWOOSH_R_SHIFT, _swoosh.SWOOSH_R_OFFSET, dropout_prob)


def swoosh_l_forward(x: Tensor) -> Tensor:
    """SwooshL(x) in float32, no autograd graph."""
    with torch.no_grad():
        return _swoosh.swoosh(x.float(), _swoosh.SWOOSH_L_SHIFT, _swoosh.SWOOSH_L_OFFSET)


def swoosh_r_forward(x: Tensor) -> Tensor:
    """SwooshR(x) in float32, no autograd graph."""
    with torch.no_grad():
        return _swoosh.swoosh(x.float(), _swoosh.SWOOSH_R_SHIFT, _swoosh.SWOOSH_R_OFFSET)


def _forward_and_deriv(x: Tensor, shift: float, offset: float) -> Tuple[Tensor, Tensor]:
    with torch.no_grad():
        xf = x.float()
        # k2's 0.92 - 1 / (1 + exp(x - shift)) == sigmoid(x - shift) - 0.08
        return _swoosh.swoosh(xf, shift, offset), torch.sigmoid(xf - shift) + _swoosh.COMPACT_FLOOR


def swoosh_l_forward_and_deriv(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(SwooshL(x), SwooshL'(x)) in float32, no autograd graph."""
    return _forward_and_deriv(x, _swoosh.SWOOSH_L_SHIFT, _swoosh.SWOOSH_L_OFFSET)


def swoosh_r_forward_and_deriv(x: Tensor) -> Tuple[Tensor, Tensor]:
    """(SwooshR(x), SwooshR'(x)) in float32, no autograd graph."""
    return _forward_and_deriv(x, _swoosh.SWOOSH_R_SHIFT, _swoosh.SWOOSH_R_OFFSET)


# ------------------------------------------------------------------------------------ RNN-T
def _penalty(delay_penalty: float) -> float:
    return delay_penalty if delay_penalty > 0.0 else 0.0  # k2 applies it only when > 0


def mutual_information_recursion(px: Tensor, py: Tensor, boundary: Optional[Tensor] = None,
                                 return_grad: bool = False):
    return _mi(px, py, boundary, return_grad=return_grad)


def get_rnnt_logprobs(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                      rnnt_type: str = "regular", boundary: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    return _rnnt.get_rnnt_logprobs(lm, am, symbols, termination_symbol, rnnt_type, boundary)


def get_rnnt_logprobs_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                               lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                               boundary: Optional[Tensor] = None, rnnt_type: str = "regular"
                               ) -> Tuple[Tensor, Tensor]:
    return _rnnt.get_rnnt_logprobs_smoothed(lm, am, symbols, termination_symbol, lm_only_scale,
                                            am_only_scale, boundary, rnnt_type)


def get_rnnt_logprobs_joint(logits: Tensor, symbols: Tensor, termination_symbol: int,
                            rnnt_type: str = "regular", boundary: Optional[Tensor] = None
                            ) -> Tuple[Tensor, Tensor]:
    # k2's argument order here is (..., rnnt_type, boundary).
    return _rnnt.get_rnnt_logprobs_joint(logits, symbols, termination_symbol, boundary, rnnt_type)


def get_rnnt_logprobs_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                             boundary: Tensor, rnnt_type: str = "regular") -> Tuple[Tensor, Tensor]:
    return _rnnt.get_rnnt_logprobs_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type)


def rnnt_loss_simple(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                     boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
                     delay_penalty: float = 0.0, reduction: Optional[str] = "mean",
                     return_grad: bool = False) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    return _rnnt.rnnt_loss_simple(lm, am, symbols, termination_symbol, boundary, rnnt_type,
                                  _penalty(delay_penalty), reduction, return_grad)


def rnnt_loss_smoothed(lm: Tensor, am: Tensor, symbols: Tensor, termination_symbol: int,
                       lm_only_scale: float = 0.1, am_only_scale: float = 0.1,
                       boundary: Optional[Tensor] = None, rnnt_type: str = "regular",
                       delay_penalty: float = 0.0, reduction: Optional[str] = "mean",
                       return_grad: bool = False) -> Union[Tensor, Tuple[Tensor, Tuple[Tensor, Tensor]]]:
    return _rnnt.rnnt_loss_smoothed(lm, am, symbols, termination_symbol, lm_only_scale, am_only_scale,
                                    boundary, rnnt_type, _penalty(delay_penalty), reduction, return_grad)


def rnnt_loss(logits: Tensor, symbols: Tensor, termination_symbol: int, boundary: Optional[Tensor] = None,
              rnnt_type: str = "regular", delay_penalty: float = 0.0,
              reduction: Optional[str] = "mean") -> Tensor:
    return _rnnt.rnnt_loss(logits, symbols, termination_symbol, boundary, rnnt_type,
                           _penalty(delay_penalty), reduction)


def rnnt_loss_pruned(logits: Tensor, symbols: Tensor, ranges: Tensor, termination_symbol: int,
                     boundary: Tensor = None, rnnt_type: str = "regular", delay_penalty: float = 0.0,
                     reduction: Optional[str] = "mean", use_hat_loss: bool = False) -> Tensor:
    if use_hat_loss:
        raise NotImplementedError("zipformer_fast.compat.k2.rnnt_loss_pruned: use_hat_loss=True (HAT) "
                                  "is not implemented")
    return _rnnt.rnnt_loss_pruned(logits, symbols, ranges, termination_symbol, boundary, rnnt_type,
                                  _penalty(delay_penalty), reduction)


def get_rnnt_prune_ranges(px_grad: Tensor, py_grad: Tensor, boundary: Tensor, s_range: int) -> Tensor:
    return _rnnt.get_rnnt_prune_ranges(px_grad, py_grad, boundary, s_range)


def do_rnnt_pruning(am: Tensor, lm: Tensor, ranges: Tensor) -> Tuple[Tensor, Tensor]:
    return _rnnt.do_rnnt_pruning(am, lm, ranges)


for _f in (get_rnnt_logprobs, get_rnnt_logprobs_smoothed, get_rnnt_logprobs_joint, get_rnnt_logprobs_pruned,
           rnnt_loss_simple, rnnt_loss_smoothed, rnnt_loss, rnnt_loss_pruned, get_rnnt_prune_ranges,
           do_rnnt_pruning):
    _f.__doc__ = (f"k2.{_f.__name__} (same arguments and semantics), computed by "
                  f"zipformer_fast.asr.rnnt_loss.{_f.__name__}.\n\n" + (getattr(_rnnt, _f.__name__).__doc__ or ""))


# ------------------------------------------------------------------------------ installation
version = types.ModuleType("k2.version")
version.__version__ = "0.0+zipformer_fast.compat"
version.__build_type__ = "zipformer_fast.compat.k2 (no k2)"
version.__git_sha1__ = version.__git_date__ = "n/a"
with_cuda = torch.cuda.is_available()


def install(force: bool = False):
    """Make `import k2` (and `import k2.version`, `k2.ragged`) give this module; call before
    icefall is imported. A real k2 already imported is left alone unless force=True. Returns the
    module `import k2` now gives."""
    current = sys.modules.get("k2")
    if current is not None and current is not sys.modules[__name__] and not force:
        return current
    sys.modules["k2"] = sys.modules[__name__]
    sys.modules["k2.version"] = version
    sys.modules["k2.ragged"] = ragged
    return sys.modules[__name__]


class _UnavailableMeta(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unavailable(f"{cls.__qualname__}.{name}")

    def __call__(cls, *args, **kwargs):
        raise NotImplementedError(f"k2.{cls.__qualname__} is not provided by zipformer_fast.compat.k2 "
                                  f"(it covers Swoosh and the RNN-T losses only); install k2 for it")


def _unavailable(name: str) -> type:
    cls = _UnavailableMeta(name.rsplit(".", 1)[-1], (), {"__module__": __name__})
    cls.__qualname__ = name
    return cls


def __getattr__(name: str):
    # Placeholders let code that merely mentions k2.Fsa / k2.RaggedTensor (annotations,
    # isinstance checks) import; using one raises NotImplementedError naming it.
    if name.startswith("__"):
        raise AttributeError(name)
    return _unavailable(name)
