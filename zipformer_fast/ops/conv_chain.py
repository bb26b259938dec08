"""A chain of Swoosh activations, 2-D convolutions and Balancers that stores only its input:
Conv-Embed's SwooshR -> Conv2d pairs and its ConvNeXt branch
SwooshR -> depthwise 7x7 -> pointwise 1x1 -> Balancer -> SwooshL -> pointwise 1x1 (icefall subsampling.py).

    conv_chain(x, stages, return_after=None) -> y, or (y, output of stage `return_after`)
    stages: ("swoosh", "SwooshL" | "SwooshR")
            ("conv", (weight, bias, stride, padding, groups))     zero padding, dilation 1
            ("balancer", BalancerConfig or None)                  identity forward (ops.balancer)

Reference: the plain composition (ops.swoosh, F.conv2d, ops.balancer.balancer in order), as icefall
runs it. Autograd then saves the input of every stage: for the ConvNeXt branch that is the block
input, its activation, the depthwise output and the 3x-wide pointwise output twice (pre- and
post-activation).

Fused path (backend "triton"; pure PyTorch around the swoosh kernels): an autograd.Function that
saves only x and the parameters. Backward recomputes every stage's input with the same calls as
forward (the swoosh kernel and F.conv2d: bit-identical values), then walks the stages backwards:
aten.convolution_backward for a conv (what autograd's ConvolutionBackward runs), the swoosh
kernel's backward, ops.balancer.balancer_gradient for an active Balancer (on the recomputed input).
So the gradients equal the composition's (same values, same formulas). Cost: the stages but the
last run again in backward (for the ConvNeXt branch: a depthwise and a 1x1 conv). Under autocast
each conv runs in the autocast dtype, as F.conv2d would; gradients are cast back where the forward
cast. `return_after=k` also returns stage k's output (the ConvNeXt bypass reads the activation);
its gradient joins the chain's. Not double-differentiable.
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..backend import use_triton_for
from ._registry import autocast_enabled, backward_once, compute_dtype, function_may_launch
from .balancer import balancer, balancer_gradient
from .swoosh import SWOOSH_L_OFFSET, SWOOSH_L_SHIFT, SWOOSH_R_OFFSET, SWOOSH_R_SHIFT, swoosh
from .traced_conv import conv, convolution_backward

_CONSTANTS = {"SwooshL": (SWOOSH_L_SHIFT, SWOOSH_L_OFFSET), "SwooshR": (SWOOSH_R_SHIFT, SWOOSH_R_OFFSET)}


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _cast(t: Optional[Tensor], dtype: Optional[torch.dtype]) -> Optional[Tensor]:
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


def _plan(stages) -> Tuple[tuple, list]:
    """(static plan, flat parameter list): plan entries ("swoosh", shift, offset),
    ("conv", stride, padding, groups, has_bias) with its weight (and bias) appended to params,
    ("balancer", config)."""
    plan, params = [], []
    for kind, arg in stages:
        if kind == "swoosh":
            if arg not in _CONSTANTS:
                raise ValueError(f"activation {arg!r}: expected one of {tuple(_CONSTANTS)}")
            plan.append(("swoosh",) + _CONSTANTS[arg])
        elif kind == "conv":
            w, b, stride, padding, groups = arg
            plan.append(("conv", _pair(stride), _pair(padding), int(groups), b is not None))
            params += [w] if b is None else [w, b]
        elif kind == "balancer":
            if arg is not None:
                plan.append(("balancer", arg))
        else:
            raise ValueError(f"conv_chain: unknown stage {kind!r}")
    return tuple(plan), params


def _run(x: Tensor, plan, params, cdt, fused: bool, keep_inputs: bool = False, capture: Optional[int] = None):
    """Forward through the plan: (output, [input of each stage] if keep_inputs, output of stage
    `capture` or None)."""
    inputs = [] if keep_inputs else None
    captured = None
    it = iter(params)
    y = x
    for i, step in enumerate(plan):
        if keep_inputs:
            inputs.append(y)
        if step[0] == "swoosh":
            if fused:
                from .swoosh import _swoosh_fwd
                y = _swoosh_fwd(y, step[1], step[2], False)[0]
            else:
                y = swoosh(y, step[1], step[2])
        elif step[0] == "conv":
            _, stride, padding, groups, has_bias = step
            w = next(it)
            b = next(it) if has_bias else None
            y = conv(_cast(y, cdt), _cast(w, cdt), _cast(b, cdt), stride, padding, groups)
        elif not fused:  # an active Balancer: identity forward, gradient edit in backward
            y = balancer(y, step[1])
        if i == capture:
            captured = y
    return y, inputs, captured


class _ConvChain(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, plan, cdt, return_after, *params):
        y, _, mid = _run(x, plan, params, cdt, True, capture=return_after)
        ctx.plan, ctx.cdt, ctx.return_after = plan, cdt, return_after
        ctx.save_for_backward(x, *params)
        return y if return_after is None else (y, mid)

    @staticmethod
    @backward_once
    def backward(ctx, grad_y, grad_mid=None):
        x, *params = ctx.saved_tensors
        plan, cdt = ctx.plan, ctx.cdt
        # The input of every stage, recomputed as in forward (the last stage itself is not rerun).
        last_input, inputs, _ = _run(x, plan[:-1], params, cdt, True, keep_inputs=True)
        inputs.append(last_input)
        need = ctx.needs_input_grad[4:]
        grads = [None] * len(params)
        p = len(params)
        g = grad_y
        for i in range(len(plan) - 1, -1, -1):
            step, inp = plan[i], inputs[i]
            if i == ctx.return_after and grad_mid is not None:
                g = g + grad_mid.to(g.dtype)
            if step[0] == "conv":
                _, stride, padding, groups, has_bias = step
                p -= 1 + has_bias
                w, b = params[p], (params[p + 1] if has_bias else None)
                wc = _cast(w, cdt)
                mask = [i > 0 or ctx.needs_input_grad[0], bool(need[p]), has_bias and bool(need[p + 1])]
                dinp, dw, db = convolution_backward(_cast(g, wc.dtype), inp, wc, has_bias, stride, padding, groups,
                                                    *mask)
                if mask[1]:
                    grads[p] = dw.to(w.dtype)
                if mask[2]:
                    grads[p + 1] = db.to(b.dtype)
                g = dinp
            elif step[0] == "swoosh":
                from .swoosh import _swoosh_bwd
                g = _swoosh_bwd(_cast(g, inp.dtype), inp, step[1], False)
            else:
                g = balancer_gradient(inp, _cast(g, inp.dtype), step[1])
        dx = _cast(g, x.dtype) if ctx.needs_input_grad[0] else None
        return (dx, None, None, None, *grads)


def conv_chain(x: Tensor, stages: Sequence[tuple], return_after: Optional[int] = None):
    """See the module docstring. x (N, C, H, W)."""
    plan, params = _plan(stages)
    if not plan:
        raise ValueError("conv_chain: needs at least one stage")
    if return_after is not None:
        # Index into the plan (inactive Balancers are dropped from it).
        kept = [i for i, (kind, arg) in enumerate(stages) if not (kind == "balancer" and arg is None)]
        if return_after not in kept:
            raise ValueError(f"conv_chain: return_after={return_after} is not an active stage")
        return_after = kept.index(return_after)
        if return_after == len(plan) - 1:
            raise ValueError("conv_chain: return_after must be an inner stage")
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in [x] + params)
    if needs_grad and x.dim() == 4 and x.numel() > 0 and use_triton_for(x, *params) and function_may_launch():
        cdt = compute_dtype(x) if autocast_enabled(x) else None
        return _ConvChain.apply(x, plan, cdt, return_after, *params)
    # The reference composition (also the fused backend's no-grad path: swoosh runs its kernel).
    y, _, mid = _run(x, plan, params, None, False, capture=return_after)
    return y if return_after is None else (y, mid)
