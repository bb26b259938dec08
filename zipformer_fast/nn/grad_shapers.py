"""Gradient-only helpers from icefall's scaling.py: Balancer, Whiten, ScaleGrad, limit_param_value.

None of them changes a forward value; each edits gradients in backward, and each decides with
Python's `random` (as icefall does, in the same order) whether to act on a given call:
- Balancer: per-channel limits on mean/std ("proportion positive") and RMS ("abs value").
  Applied whenever the input requires grad -- also in eval mode -- with probability `prob`.
  The gradient math is zipformer_fast.ops.balancer (shared with ops that recompute their input).
- Whiten: pushes the channel covariance towards a multiple of I when a whiteness metric exceeds
  `whitening_limit`; its probability switches between min_prob/max_prob after each backward.
- ScaleGrad: gradient x alpha (training only).
- limit_param_value: flips gradient signs that push a parameter further outside [min, max].

Under torch.compile (randomness.device_side()) the same decisions are drawn on device: each call
passes a 0-dim bool "fire" tensor to its autograd.Function and the backward keeps its edit only
where it is true; schedules come in as tensors (scheduled_float.value). The Whiten probability
then lives in the non-persistent buffer `prob_tensor`, switched by the backward itself.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..backend import use_triton_for
from ..ops._registry import FusedOp
from ..ops.balancer import BalancerConfig, balancer, grad_and_value
from ..ops.whitening import whitening_metric_and_grad
from .randomness import device_side, record_draw
from .scheduled_float import FloatLike, ScheduledFloat, value


# --------------------------------------------------------------------------------- Balancer
class _CutoffEstimator:
    """Running cutoff such that a fraction p of values lie above it (icefall CutoffEstimator).
    Used to skip Balancers about 5% of the time when CUDA memory is at its high-water mark."""

    def __init__(self, p: float):
        self.p, self.count, self.count_above, self.cutoff = p, 0, 0, 0.0

    def __call__(self, x: float) -> bool:
        above = x > self.cutoff
        self.count += 1
        self.count_above += int(above)
        delta = self.count_above / self.count - self.p
        if (delta > 0) == above:
            q = abs(delta)
            self.cutoff = x * q + self.cutoff * (1 - q)
        return above


def _proportion_positive_to_mean(p):
    # Approximate inverse erf via atanh, as icefall (eps avoids log(0) at p = 0 or 1).
    log = torch.log if isinstance(p, Tensor) else math.log
    z = 2.0 * p - 1.0
    eps = 1.0e-10
    return 0.8139535143 * (log(1 + z + eps) - log(1 - z + eps)) / 2.0


def _abs_to_rms(a):
    return 1.25331413732 * a  # sqrt(pi/2): mean |x| -> rms for Gaussian data


class Balancer(nn.Module):
    """icefall Balancer(num_channels, channel_dim, min_positive, max_positive, min_abs, max_abs,
    grad_scale, prob). Identity forward."""

    def __init__(self, num_channels: int, channel_dim: int, min_positive: FloatLike = 0.05,
                 max_positive: FloatLike = 0.95, min_abs: FloatLike = 0.2, max_abs: FloatLike = 100.0,
                 grad_scale: FloatLike = 0.04, prob: Optional[FloatLike] = None):
        super().__init__()
        if prob is None:
            prob = ScheduledFloat((0.0, 0.5), (8000.0, 0.125), default=0.4)
        self.prob = prob
        self.mem_cutoff = _CutoffEstimator(0.05)
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.min_positive = min_positive
        self.max_positive = max_positive
        self.min_abs = min_abs
        self.max_abs = max_abs
        self.grad_scale = grad_scale
        # None: icefall's random choice; True / False: always / never act (tests, golden replay).
        self.forced: Optional[bool] = None
        # Whether the last device-side draw acted (randomness.record_draw; not in the state dict).
        self.register_buffer("fired", torch.zeros((), dtype=torch.bool), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        config = self.draw(x.shape, x.device, x.requires_grad)
        return x if config is None else balancer(x, config)

    def draw(self, shape, device: torch.device, requires_grad: bool = True) -> Optional[BalancerConfig]:
        """Whether this call acts (icefall's random draw, made as forward makes it) and with which
        limits: a BalancerConfig, or None. For an input of `shape` on `device`; ops that compute
        the balanced tensor themselves (conv_chain, gated_depthwise_conv1d) take the config
        and apply it in their backward."""
        if torch.jit.is_scripting() or not requires_grad or self.forced is False:
            return None
        if device_side():
            return self._draw_on_device(shape, device)
        if self.forced is None:
            if torch.device(device).type == "cuda" and self.mem_cutoff(torch.cuda.memory_allocated()):
                return None
            prob = float(self.prob)
            if random.random() >= prob:
                return None
        min_mean = _proportion_positive_to_mean(float(self.min_positive))
        max_mean = _proportion_positive_to_mean(float(self.max_positive))
        min_rms = _abs_to_rms(float(self.min_abs))
        max_rms = _abs_to_rms(float(self.max_abs))
        grad_scale = float(self.grad_scale)
        if shape[self.channel_dim] != self.num_channels:
            raise ValueError(f"Balancer: expected {self.num_channels} channels on dim {self.channel_dim}, "
                             f"got shape {tuple(shape)}")
        return BalancerConfig(min_mean, max_mean, min_rms, max_rms, grad_scale, self.channel_dim % len(shape))

    def _draw_on_device(self, shape, device) -> BalancerConfig:
        """The traceable draw: always a config; whether it acts is its `fire` tensor (forced: None, acts)."""
        if shape[self.channel_dim] != self.num_channels:
            raise ValueError(f"Balancer: expected {self.num_channels} channels on dim {self.channel_dim}, "
                             f"got shape {tuple(shape)}")
        fire = None
        if self.forced is None:
            fire = record_draw(self.fired, torch.rand((), device=device) < value(self.prob))

        def limit(v: FloatLike) -> Tensor:
            # Float limits become tensors too: dynamo would otherwise trace the math.log of a
            # float module attribute symbolically and guard on it.
            return torch.as_tensor(value(v), dtype=torch.float32, device=device)

        return BalancerConfig(_proportion_positive_to_mean(limit(self.min_positive)),
                              _proportion_positive_to_mean(limit(self.max_positive)),
                              _abs_to_rms(limit(self.min_abs)), _abs_to_rms(limit(self.max_abs)),
                              limit(self.grad_scale), self.channel_dim % len(shape), fire)


# ----------------------------------------------------------------------------------- Whiten
def whitening_metric(x: Tensor, num_groups: int) -> Tensor:
    """>= 1; equals 1 when each group's centred covariance is a multiple of I with equal traces."""
    x = x.reshape(-1, x.shape[-1])
    frames, channels = x.shape
    c = channels // num_groups
    x = x.reshape(frames, num_groups, c).transpose(0, 1)        # (G, N, c)
    x = x - x.mean(dim=1, keepdim=True)
    covar = torch.matmul(x.transpose(1, 2), x)                  # (G, c, c), sum over frames
    mean_diag = torch.diagonal(covar, dim1=1, dim2=2).mean()
    covar_sq_mean_diag = (covar ** 2).sum() / (num_groups * c)  # = mean diag of covar @ covar
    return covar_sq_mean_diag / (mean_diag ** 2 + 1.0e-20)


class _WhitenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, module: "Whiten") -> Tensor:
        ctx.save_for_backward(x)
        ctx.module = module
        ctx.fused = use_triton_for(x)  # the backend in force now, not when backward runs
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        w = ctx.module
        limit = float(w.whitening_limit)
        # The metric's gradient: autograd of the metric, or (fused backend) its closed form.
        metric_and_grad = whitening_metric_and_grad if ctx.fused else _whitening_metric_and_grad_autograd
        with torch.autocast(device_type=x.device.type, enabled=False):
            metric, penalty_grad = metric_and_grad(x.detach().to(torch.float32), w.num_groups, limit)
        if random.random() < 0.005:  # icefall's occasional log line (keeps `random` aligned)
            logging.debug("Whiten metric %.2f vs limit %.2f", float(metric), limit)
        if penalty_grad is None:
            w.prob = w.min_prob
            return grad, None
        w.prob = w.max_prob
        scale = w.grad_scale * (grad.to(torch.float32).norm() / (penalty_grad.norm() + 1.0e-20))
        return grad + (penalty_grad * scale).to(grad.dtype), None


def _whitening_metric_and_grad_autograd(xf: Tensor, num_groups: int, limit: float):
    """(metric, d metric / d xf or None when metric < limit), the gradient by autograd."""
    with torch.enable_grad():
        xf = xf.requires_grad_(True)
        metric = whitening_metric(xf, num_groups)
        if metric < limit:
            return metric.detach(), None
        (penalty_grad,) = torch.autograd.grad(metric, xf)
    return metric.detach(), penalty_grad


class _WhitenOnDevice(torch.autograd.Function):
    """_WhitenFunction's traceable twin: `fire` (0-dim bool) says whether this call acts, `limit` may be
    a tensor, and the probability switch is written into `prob` (the module's prob_tensor) in place."""

    @staticmethod
    def forward(ctx, x: Tensor, fire: Tensor, limit, prob: Tensor, num_groups: int, grad_scale: float,
                min_prob: float, max_prob: float) -> Tensor:
        ctx.limit_is_tensor = isinstance(limit, Tensor)
        ctx.limit = None if ctx.limit_is_tensor else limit
        ctx.save_for_backward(x, fire, prob, *((limit,) if ctx.limit_is_tensor else ()))
        ctx.num_groups, ctx.grad_scale, ctx.min_prob, ctx.max_prob = num_groups, grad_scale, min_prob, max_prob
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, fire, prob, *rest = ctx.saved_tensors
        limit = rest[0] if ctx.limit_is_tensor else ctx.limit
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = x.detach().to(torch.float32)
            penalty_grad, metric = grad_and_value(whitening_metric, xf, ctx.num_groups)
        below = metric < limit
        with torch.no_grad():
            prob.copy_(torch.where(fire, torch.where(below, ctx.min_prob, ctx.max_prob), prob))
        scale = ctx.grad_scale * (grad.to(torch.float32).norm() / (penalty_grad.norm() + 1.0e-20))
        edited = grad + (penalty_grad * scale).to(grad.dtype)
        return torch.where(fire & ~below, edited, grad), None, None, None, None, None, None, None


class Whiten(nn.Module):
    """icefall Whiten(num_groups, whitening_limit, prob=(min_p, max_p), grad_scale). Identity forward."""

    def __init__(self, num_groups: int, whitening_limit: FloatLike,
                 prob: Union[float, Tuple[float, float]], grad_scale: FloatLike):
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"Whiten: num_groups={num_groups} must be >= 1")
        if isinstance(prob, (int, float)):
            prob = (float(prob), float(prob))
        self.num_groups = num_groups
        self.whitening_limit = whitening_limit
        self.grad_scale = grad_scale
        self.min_prob, self.max_prob = prob
        if not 0 < self.min_prob <= self.max_prob <= 1:
            raise ValueError(f"Whiten: prob={prob} must satisfy 0 < min <= max <= 1")
        self.prob = self.max_prob
        # The probability as device-side draws use it (not in the state dict).
        self.register_buffer("prob_tensor", torch.tensor(self.max_prob), persistent=False)
        # None: icefall's random choice; True / False: always / never act (tests, golden replay).
        self.forced: Optional[bool] = None
        # Whether the last device-side draw acted (randomness.record_draw; not in the state dict).
        self.register_buffer("fired", torch.zeros((), dtype=torch.bool), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not x.requires_grad or self.forced is False:
            return x
        if device_side():
            grad_scale = float(self.grad_scale)  # a constant in every icefall Whiten
            if grad_scale == 0:
                return x
            if self.forced is None:
                fire = record_draw(self.fired, torch.rand((), device=x.device) <= self.prob_tensor)
            else:
                fire = torch.ones((), dtype=torch.bool, device=x.device)
            return _WhitenOnDevice.apply(x, fire, value(self.whitening_limit), self.prob_tensor, self.num_groups,
                                         grad_scale, self.min_prob, self.max_prob)
        grad_scale = float(self.grad_scale)
        if self.forced is None and random.random() > self.prob:
            return x
        if grad_scale == 0:
            return x
        return _WhitenFunction.apply(x, self)


def whitening_schedule(x: float, ratio: float = 2.0) -> ScheduledFloat:
    """icefall `_whitening_schedule`: x at batch 0 -> ratio*x at 20000, default x."""
    return ScheduledFloat((0.0, x), (20000.0, ratio * x), default=x)


# ------------------------------------------------------------------- ScaleGrad / limit_param
class _ScaleGradFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, alpha: float) -> Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.alpha, None


class ScaleGrad(nn.Module):
    """Identity forward; gradient x alpha in training."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting() or torch.jit.is_tracing() or not self.training:
            return x
        return _ScaleGradFunction.apply(x, self.alpha)


class _LimitParamValue(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, min_value: float, max_value: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.bounds = (min_value, max_value)
        ctx.fused = use_triton_for(x)  # the backend in force now, not when backward runs
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        lo, hi = ctx.bounds
        if ctx.fused and x.shape == grad.shape and x.numel() > 0:
            return limit_param_gradient(x, grad, float(lo), float(hi)), None, None
        # Below min: make the gradient push x up; above max: push it down.
        grad = grad * torch.where((grad > 0) & (x < lo), -1.0, 1.0)
        grad = grad * torch.where((grad < 0) & (x > hi), -1.0, 1.0)
        return grad, None, None


def _limit_param_impl(x: Tensor, grad: Tensor, lo: float, hi: float) -> Tensor:
    from ..ops._registry import kernels

    xc = x if x.is_contiguous() else x.contiguous()
    gc = grad if grad.is_contiguous() else grad.contiguous()
    out = torch.empty_like(gc)
    kernels("limit_param").backward(xc, gc, out, lo, hi)
    return out


# The fused backend's backward of _LimitParamValue (kernels/limit_param.py): one launch.
limit_param_gradient = FusedOp("limit_param_gradient", _limit_param_impl,
                               lambda x, grad, lo, hi: torch.empty(grad.shape, dtype=grad.dtype, device=grad.device))


class _LimitParamValueOnDevice(torch.autograd.Function):
    """_LimitParamValue with the bounds as 0-dim tensors and a 0-dim bool `fire`."""

    @staticmethod
    def forward(ctx, x: Tensor, lo: Tensor, hi: Tensor, fire: Tensor) -> Tensor:
        ctx.save_for_backward(x, lo, hi, fire)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, lo, hi, fire = ctx.saved_tensors
        flip = fire & (((grad > 0) & (x < lo)) | ((grad < 0) & (x > hi)))
        # Both of icefall's flips: the first one can make grad negative, then x > hi flips it back
        # only if x is also above hi (impossible when lo <= hi), so one combined flip is the same.
        return torch.where(flip, -grad, grad), None, None, None


def limit_param_value(x: Tensor, min, max, prob: float = 0.6, training: bool = True,
                      record: Optional[Tensor] = None) -> Tensor:
    """With probability `prob` (training only) wrap x so backward keeps it within [min, max].
    min / max are floats, or 0-dim tensors under device-side randomness; `record`, a 0-dim bool
    buffer of the calling module, receives the device-side draw (randomness.record_draw)."""
    if not isinstance(min, Tensor) and not isinstance(max, Tensor) and max < min:
        raise ValueError(f"limit_param_value: max={max} < min={min}")
    if not training:
        return x
    if device_side():
        lo, hi = (torch.as_tensor(v, dtype=torch.float32, device=x.device) for v in (min, max))
        fire = torch.rand((), device=x.device) < prob
        if record is not None:
            record_draw(record, fire)
        return _LimitParamValueOnDevice.apply(x, lo, hi, fire)
    if random.random() < prob:
        return _LimitParamValue.apply(x, min, max)
    return x
