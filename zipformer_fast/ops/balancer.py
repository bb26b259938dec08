"""icefall's Balancer gradient edit (scaling.py), as a function that ops which recompute their
activations in backward can apply to the recomputed tensor.

The Balancer is the identity in forward. In backward it adds |grad| * g_loss, where g_loss is the
gradient of a per-channel constraint loss (mean/std within [min_mean, max_mean], RMS within
[min_rms, max_rms]) normalised per channel to RMS grad_scale; it needs x element-wise.

- `BalancerConfig`: the limits one active call uses (nn.Balancer.draw decides, with icefall's random
  draws, whether a call acts and returns its config, or None).
- `balancer_gradient(x, grad, config)`: the edited gradient (fp32 math, outside autocast).
- `balancer(x, config)`: the autograd form (saves x); what nn.Balancer applies.
Ops that take a BalancerConfig (ops.conv_chain, ops.gated_depthwise_conv1d) apply balancer_gradient to
the tensor they recompute in backward, so an active Balancer there stores nothing.
"""
from typing import NamedTuple

import torch
from torch import Tensor


class BalancerConfig(NamedTuple):
    min_mean: float
    max_mean: float
    min_rms: float
    max_rms: float
    grad_scale: float
    channel_dim: int  # non-negative


def balancer_gradient(x: Tensor, grad: Tensor, config: BalancerConfig) -> Tensor:
    min_mean, max_mean, min_rms, max_rms, grad_scale, channel_dim = config
    # The constraint loss is differentiated in fp32, outside autocast.
    with torch.enable_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        xf = x.detach().to(torch.float32).requires_grad_(True)
        dims = [d for d in range(xf.ndim) if d != channel_dim]
        uncentered_var = (xf ** 2).mean(dim=dims, keepdim=True)
        mean = xf.mean(dim=dims, keepdim=True)
        stddev = (uncentered_var - mean * mean).clamp(min=1.0e-20).sqrt()
        rms = uncentered_var.clamp(min=1.0e-20).sqrt()
        m = mean / stddev
        m_loss = (m - m.clamp(min=min_mean, max=max_mean)).abs()
        r_loss = (rms.clamp(min=min_rms, max=max_rms) / rms).log().abs()
        loss = m_loss + r_loss
        (loss_grad,) = torch.autograd.grad(loss, xf, torch.ones_like(loss))
    # Normalise the constraint gradient to RMS grad_scale per channel, then weight each
    # element by |grad| (a noisy estimate of how much that element matters).
    loss_grad_rms = (loss_grad ** 2).mean(dim=dims, keepdim=True).sqrt().clamp(min=1.0e-20)
    loss_grad = loss_grad * (grad_scale / loss_grad_rms)
    gf = grad.to(torch.float32)
    return (gf + gf.abs() * loss_grad).to(grad.dtype)


class _BalancerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, config: BalancerConfig) -> Tensor:
        ctx.save_for_backward(x)
        ctx.config = config
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return balancer_gradient(x, grad, ctx.config), None


def balancer(x: Tensor, config: BalancerConfig) -> Tensor:
    """Identity forward; backward applies balancer_gradient (config None: plain identity)."""
    if config is None:
        return x
    return _BalancerFunction.apply(x, config)
