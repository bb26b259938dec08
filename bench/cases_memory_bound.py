"""Benchmark cases for the fused memory-bound ops and the activation GEMMs (bench/kernels.py).

Each OpCase holds the ops-level function (dispatches to Triton under use_backend("triton")), the
pure reference function (what "reference" runs and what torch.compile compiles), and an input
builder. Sizes are Zipformer-M's at the paper's batch (B = 30 utterances x 30 s, T = 1500 frames
at 50 Hz before per-stack downsampling); `smoke=True` gives tiny shapes for CPU/CI.

Bytes moved (for GB/s): forward = every tensor input read once + the output written once;
backward = grad_out read + every tensor input read once + every input gradient written once.
That is the minimum traffic of a fused kernel; parameters of (D,) size are negligible.
"""
import dataclasses
import importlib
from typing import Callable, List, Optional

import torch

B_M, T_M = 30, 1500  # Zipformer-M benchmark batch: 30 utterances of 30 s at 50 Hz


def _op(module: str):
    return importlib.import_module(f"zipformer_fast.ops.{module}")


@dataclasses.dataclass
class OpCase:
    op: str
    shape: str
    fused: Callable           # ops function (backend-dispatched)
    reference: Callable       # pure reference (also compiled by torch.compile)
    make: Callable            # (device, dtype) -> list of inputs (tensors requiring grad, or other args)
    memory_bound: bool = True
    flops: Optional[Callable] = None  # inputs -> FLOPs of one forward (GEMMs)


def _rand(shape, device, dtype, scale=1.0, grad=True):
    return (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_(grad)


def memory_bound_cases(smoke: bool = False) -> List[OpCase]:
    sw, bn, bp, ds, al = (_op(m) for m in ("swoosh", "bias_norm", "bypass", "downsample", "activation_linear"))
    T, B = (12, 2) if smoke else (T_M, B_M)
    d = (lambda n: max(8, n // 32)) if smoke else (lambda n: n)  # channel sizes shrink in smoke mode

    def p(shape, device, grad=True):  # fp32 parameter, as in the model
        return torch.rand(shape, device=device).requires_grad_(grad)

    out = []
    for D in (d(384), d(1536)):
        out.append(OpCase("swoosh_l", f"T={T},B={B},D={D}", sw.swoosh_l, sw.swoosh_l_reference,
                          lambda dev, dt, D=D: [_rand((T, B, D), dev, dt, 3.0)]))
    for Tn, D in ((T, d(192)), (T // 8 + 1, d(512))):
        out.append(OpCase("bias_norm", f"T={Tn},B={B},D={D}", bn.bias_norm, bn.bias_norm_reference,
                          lambda dev, dt, Tn=Tn, D=D: [_rand((Tn, B, D), dev, dt), torch.tensor(0.5, device=dev).requires_grad_(),
                                                       p((D,), dev)]))
    for Tn, D, per_b in ((T, d(192), False), (T // 2, d(256), True)):
        out.append(OpCase("bypass", f"T={Tn},B={B},D={D},scale={'BxD' if per_b else 'D'}", bp.bypass, bp.bypass_reference,
                          lambda dev, dt, Tn=Tn, D=D, per_b=per_b: [_rand((Tn, B, D), dev, dt), _rand((Tn, B, D), dev, dt),
                                                                    p((B, D) if per_b else (D,), dev)]))
    for f, D in ((2, d(256)), (8, d(512))):
        out.append(OpCase("simple_downsample", f"T={T},B={B},D={D},ds={f}", ds.simple_downsample,
                          ds.simple_downsample_reference,
                          lambda dev, dt, f=f, D=D: [_rand((T, B, D), dev, dt), p((f,), dev)]))
        out.append(OpCase("upsample_bypass", f"T={T},B={B},D={D},ds={f}",
                          lambda x, y, c, f=f: bp.upsample_bypass(x, y, f, c),
                          lambda x, y, c, f=f: bp.upsample_bypass_reference(x, y, f, c),
                          lambda dev, dt, f=f, D=D: [_rand((T, B, D), dev, dt), _rand(((T + f - 1) // f, B, D), dev, dt),
                                                     p((D,), dev)]))
    gemm_flops = lambda ins: 2 * ins[0].numel() * ins[1].shape[0]
    # FF1 out_proj of stack 0 (F'=384 -> 192, SwooshL, dropout shared over time), FF3 of stack 3
    # (1920 -> 512 at T/8), and the conv module's out_proj (192 -> 192, SwooshR, no dropout).
    for Tn, K, N, act, drop in ((T, d(384), d(192), "SwooshL", True), (T // 8 + 1, d(1920), d(512), "SwooshL", True),
                                (T, d(192), d(192), "SwooshR", False)):
        def make(dev, dt, Tn=Tn, K=K, N=N, drop=drop):
            x = _rand((Tn, B, K), dev, dt, 2.0)
            w = _rand((N, K), dev, dt, K ** -0.5)
            mask = ((torch.rand(1, B, K, device=dev) > 0.1).to(dt) / 0.9) if drop else None
            return [x, w, _rand((N,), dev, dt, 0.1), mask]
        out.append(OpCase(f"act_dropout_linear_{act}", f"T={Tn},B={B},K={K},N={N},mask={drop}",
                          lambda x, w, b, m, act=act: al.activation_dropout_linear(x, w, b, act, m),
                          lambda x, w, b, m, act=act: al.activation_dropout_linear_reference(x, w, b, act, m),
                          make, memory_bound=False, flops=gemm_flops))
    # FF in_proj + SwooshL (inference-only fusion): stack 0, 192 -> 512.
    out.append(OpCase("linear_swoosh_l", f"T={T},B={B},K={d(192)},N={d(512)},no_grad",
                      lambda x, w, b: al.linear_swoosh(x, w, b, "SwooshL"),
                      lambda x, w, b: al.linear_swoosh_reference(x, w, b, "SwooshL"),
                      lambda dev, dt: [_rand((T, B, d(192)), dev, dt, grad=False), _rand((d(512), d(192)), dev, dt, 0.07, grad=False),
                                       _rand((d(512),), dev, dt, 0.1, grad=False)],
                      memory_bound=False, flops=gemm_flops))
    return out
