"""icefall's Balancer gradient edit (scaling.py), as a function that ops which recompute their
activations in backward can apply to the recomputed tensor.

The Balancer is the identity in forward. In backward it adds |grad| * g_loss, where g_loss is the
gradient of a per-channel constraint loss (mean/std within [min_mean, max_mean], RMS within
[min_rms, max_rms]) normalised per channel to RMS grad_scale; it needs x element-wise.

- `BalancerConfig`: the limits one active call uses (nn.Balancer.draw decides, with icefall's random
  draws, whether a call acts and returns its config, or None). Under torch.compile the limits may be
  0-dim tensors (batch-count schedules) and `fire` a 0-dim bool tensor: the random decision drawn on
  device; the edit is then computed and kept only where `fire` is true (torch.where), so the graph
  does not depend on the draw.
- `balancer_gradient(x, grad, config)`: the edited gradient (fp32 math, outside autocast).
- `balancer(x, config)`: the autograd form (saves x); what nn.Balancer applies.
The constraint loss is differentiated by `grad_and_value`: torch.autograd.grad in eager mode (works
under saved_tensors_hooks, which torch.func refuses: activation offloading, saved-bytes counting),
torch.func.grad_and_value while dynamo traces (the same formulas, traceable inside a backward).
Ops that take a BalancerConfig (ops.conv_chain, ops.gated_depthwise_conv1d) apply balancer_gradient to
the tensor they recompute in backward, so an active Balancer there stores nothing.

Fused path (backend "triton", eager, limits given as numbers): kernels/balancer.py computes the
same edit in three launches (per-channel sums, the per-channel affine gradient of the constraint
loss by the chain rule autograd applies, the element-wise edit) instead of differentiating the
constraint loss with autograd (about ninety launches). Under torch.compile (tensor limits, a device
`fire` flag) the reference formulas are traced.
"""
from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from ..backend import use_triton_for
from ._registry import FusedOp, function_may_launch

Limit = Union[float, Tensor]


class BalancerConfig(NamedTuple):
    min_mean: Limit
    max_mean: Limit
    min_rms: Limit
    max_rms: Limit
    grad_scale: Limit
    channel_dim: int  # non-negative
    fire: Optional[Tensor] = None  # 0-dim bool: act or not (device-side draw); None: act


def _constraint_loss(xf: Tensor, dims, min_mean: Limit, max_mean: Limit, min_rms: Limit, max_rms: Limit) -> Tensor:
    uncentered_var = (xf ** 2).mean(dim=dims, keepdim=True)
    mean = xf.mean(dim=dims, keepdim=True)
    stddev = (uncentered_var - mean * mean).clamp(min=1.0e-20).sqrt()
    rms = uncentered_var.clamp(min=1.0e-20).sqrt()
    m = mean / stddev
    m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
    r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
    return (m_loss + r_loss).sum()


def grad_and_value(fn, x: Tensor, *args):
    """(d fn(x, *args) / dx, fn(x, *args)) for a scalar fn of x (see the module docstring)."""
    if torch.compiler.is_compiling():
        return torch.func.grad_and_value(fn)(x, *args)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        value = fn(xg, *args)
        (g,) = torch.autograd.grad(value, xg)
    return g, value.detach()


def _fusable(x: Tensor, grad: Tensor, config: BalancerConfig) -> bool:
    """Whether the Triton edit covers this call (eager limits, matching floating tensors)."""
    return (config.fire is None and not any(isinstance(v, Tensor) for v in config[:5]) and x.shape == grad.shape
            and x.numel() > 0 and x.is_floating_point())


def _gradient_impl(x: Tensor, grad: Tensor, channel_dim: int, min_mean: float, max_mean: float, min_rms: float,
                   max_rms: float, grad_scale: float) -> Tensor:
    from ._registry import kernels

    C = x.shape[channel_dim]
    inner = 1
    for n in x.shape[channel_dim + 1:]:
        inner *= n
    outer = x.numel() // (C * inner)
    xc = x if x.is_contiguous() else x.contiguous()
    gc = grad if grad.is_contiguous() else grad.contiguous()
    out = torch.empty_like(gc)
    kernels("balancer").gradient(xc, gc, out, outer, C, inner, min_mean, max_mean, min_rms, max_rms, grad_scale)
    return out


def _gradient_fake(x: Tensor, grad: Tensor, channel_dim: int, min_mean: float, max_mean: float, min_rms: float,
                   max_rms: float, grad_scale: float) -> Tensor:
    return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)


_balancer_gradient_fused = FusedOp("balancer_gradient", _gradient_impl, _gradient_fake)


def balancer_gradient(x: Tensor, grad: Tensor, config: BalancerConfig, fused: Optional[bool] = None) -> Tensor:
    """`fused`: the backend's choice made in forward (a backward runs outside the forward's
    `configure` block); None decides now (ops that recompute their input in backward)."""
    if fused is None:
        fused = use_triton_for(x, grad)
    if fused and _fusable(x, grad, config):
        return _balancer_gradient_fused(x, grad, config.channel_dim, *(float(v) for v in config[:5]))
    return balancer_gradient_reference(x, grad, config)


def balancer_gradient_reference(x: Tensor, grad: Tensor, config: BalancerConfig) -> Tensor:
    min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim, fire = config
    # The constraint loss is differentiated in fp32, outside autocast.
    with torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.detach().to(torch.float32)
        dims = [d for d in range(xf.ndim) if d != channel_dim]
        loss_grad, _ = grad_and_value(_constraint_loss, xf, dims, min_mean, max_mean, min_rms, max_rms)
    # Normalise the constraint gradient to RMS grad_scale per channel, then weight each
    # element by |grad| (a noisy estimate of how much that element matters).
    loss_grad_rms = (loss_grad ** 2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
    loss_grad = loss_grad * (grad_scale / loss_grad_rms)
    gf = grad.to(torch.float32)
    edited = (gf + gf.abs() * loss_grad).to(grad.dtype)
    return edited if fire is None else torch.where(fire, edited, grad)


class _BalancerFunction(torch.autograd.Function):
    """Identity forward; limits that are tensors (schedules, the fire flag) are saved with x."""

    @staticmethod
    def forward(ctx, x: Tensor, min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim: int, fire):
        fields = (min_mean, max_mean, min_rms, max_rms, grad_scale, fire)
        ctx.is_tensor = tuple(isinstance(f, Tensor) for f in fields)
        ctx.constants = tuple(None if t else f for f, t in zip(fields, ctx.is_tensor))
        ctx.channel_dim = channel_dim
        # the backend in force now, not when backward runs; while tracing, the gradient edit is
        # traced as torch ops (_registry.function_may_launch)
        ctx.fused = use_triton_for(x) and function_may_launch()
        ctx.save_for_backward(x, *(f for f, t in zip(fields, ctx.is_tensor) if t))
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, *tensors = ctx.saved_tensors
        it = iter(tensors)
        f = [next(it) if t else c for t, c in zip(ctx.is_tensor, ctx.constants)]
        config = BalancerConfig(f[0], f[1], f[2], f[3], f[4], ctx.channel_dim, f[5])
        return (balancer_gradient(x, grad, config, ctx.fused),) + (None,) * 7


def balancer(x: Tensor, config: Optional[BalancerConfig]) -> Tensor:
    """Identity forward; backward applies balancer_gradient (config None: plain identity)."""
    if config is None:
        return x
    return _BalancerFunction.apply(x, *config)
