"""Benchmark cases for Zipformer's shared-weight attention: one layer's weights and their three uses
(non-linear attention on head 0, self-attention 1 and 2), forward and forward+backward.

Implementations per case:
  reference          zipformer_fast.ops.attention reference (materialises (H,B,T,T) fp32 weights)
  reference_compile  torch.compile of the same reference function
  fused_recompute    Triton kernels, weights recomputed per use (memory linear in T)
  fused_materialize  Triton kernels, weights written once in the compute dtype, cuBLAS uses
  flex_forward       forward only: torch.nn.attention.flex_attention (compiled) with the relative
                     position term and the key padding (-1000 fill, so fully masked rows stay
                     uniform, as icefall) in score_mod, scale 1.0, value widths padded to 16: one
                     call for non-linear attention (head 0) and one for both self-attentions
                     (their values side by side), i.e. a yardstick for the forward's score passes

Shapes: Zipformer-M stack 0 (H=4, query 32, pos 4, value 12, D=192 so NLA width 144; the stack at
the full 50 Hz frame rate, where T is largest) and stack 3 (H=8, D=512, NLA width 384), at
T = 250, 750, 1500 frames (5, 15, 30 s), batch 30 (the paper's 30 x 30 s protocol). Inputs are
bf16 leaves used under torch.autocast(bf16), as mixed-precision training runs them.

Interface for bench/kernels.py: `attention_cases(device)` returns `AttentionCase`s; `case.make(impl, pass_)`
returns a zero-argument callable running one iteration (pass_ "fwd", "bwd" or "fwdbwd"; "bwd"
runs the forward once when built and times the backward alone, graph retained), built fresh
(inputs allocated) so peak memory can be measured around it. Standalone:

    python bench/cases_attention.py [--T 250 750 1500] [--batch 30] [--impls ...] [--stacks 0 3] [--out-dir DIR]

writes <out-dir>/cases_attention.{csv,json} (default bench/results/<device>/). Saved-for-backward
bytes of a whole model's training forward (device-independent, runs on CPU):

    python bench/cases_attention.py --saved-bytes M --seconds 30 --batch 1 [--out-dir DIR]

counts every storage autograd saves (bench/saved_bytes.py: once; weights and input excluded), for
the reference backend and the fused backend in each attention mode, into
<out-dir>/saved_bytes_<preset>_<seconds>s_b<batch>_attention_modes.json. The fused kernels are NOT
executed there (the interpreter's launch is stubbed: the outputs stay uninitialised) - what is saved
depends only on shapes, and running every kernel in the interpreter at 30 s would take hours.
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys
from typing import Callable, List

if __package__ in (None, ""):  # run as `python bench/cases_attention.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import (ResultTable, add_out_dir_argument, pick_device, provenance,  # noqa: E402
                           results_dir, time_calls, write_json)
from bench.memory import peak_memory_mb  # noqa: E402

IMPLS = ("reference", "reference_compile", "fused_recompute", "fused_materialize", "flex_forward")
PASSES = ("fwd", "bwd", "fwdbwd")
FORWARD_ONLY = ("flex_forward",)
STACKS = {0: dict(H=4, D=192), 3: dict(H=8, D=512)}  # Zipformer-M
QHD, PHD, VHD = 32, 4, 12


@dataclasses.dataclass
class AttentionCase:
    name: str
    T: int
    B: int
    H: int
    D: int
    device: str
    dtype: torch.dtype = torch.bfloat16

    def inputs(self):
        T, B, H, hw = self.T, self.B, self.H, 3 * self.D // 4
        g = torch.Generator(device="cpu").manual_seed(0)

        def r(*shape, scale=1.0):
            x = torch.randn(*shape, generator=g) * scale
            return x.to(device=self.device, dtype=self.dtype).requires_grad_()

        lengths = torch.linspace(T * 0.7, T, B).round().long()
        kpm = (torch.arange(T)[None, :] >= lengths[:, None]).to(self.device)
        return dict(q=r(T, B, H, QHD, scale=0.5), k=r(T, B, H, QHD, scale=0.5), p=r(T, B, H, PHD),
                    pos=r(2 * T - 1, H, PHD), v1=r(H, B, T, VHD), v2=r(H, B, T, VHD),
                    x=r(1, B, T, hw), kpm=kpm)

    def make(self, impl: str, pass_: str) -> Callable[[], None]:
        from zipformer_fast.runtime import configure, use_backend

        if impl in FORWARD_ONLY and pass_ != "fwd":
            raise ValueError(f"{impl} is a forward-only yardstick")
        t = self.inputs()
        layer = _layer_fn(impl)
        backend = "reference" if impl.startswith("reference") else "triton"
        mode = {"fused_recompute": "recompute", "fused_materialize": "materialize"}.get(impl, "auto")
        leaves = [t[n] for n in ("q", "k", "p", "pos", "v1", "v2", "x")]

        def forward():
            with use_backend(backend), configure(attention_mode=mode), \
                    torch.autocast(self.device, dtype=self.dtype):
                return layer(t)

        def clear():
            for x in leaves:
                x.grad = None

        if pass_ == "fwd":
            def step():
                with torch.no_grad():
                    forward()
            return step
        if pass_ == "bwd":
            outs = forward()
            grads = [torch.ones_like(o) for o in outs]

            def step():
                torch.autograd.backward(outs, grads, retain_graph=True)
                clear()
            return step

        def step():
            outs = forward()
            torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])
            clear()

        return step


def _layer(t):
    from zipformer_fast.ops import attention as A

    w = A.attention_weights(t["q"], t["k"], t["p"], t["pos"], t["kpm"], None)
    return (A.attention_apply(A.attention_head0(w), t["x"]), A.attention_apply(w, t["v1"]),
            A.attention_apply(w, t["v2"]))


def _pad_last(x, multiple=16):
    pad = -x.shape[-1] % multiple
    return torch.nn.functional.pad(x, (0, pad)) if pad else x


def _flex_layer(t):
    """The forward of the three uses with FlexAttention (see the module docstring)."""
    from torch.nn.attention.flex_attention import flex_attention

    if "flex" not in _COMPILED:
        _COMPILED["flex"] = torch.compile(flex_attention, dynamic=False)
    flex = _COMPILED["flex"]
    T = t["q"].shape[0]
    q, k, p = (t[n].permute(1, 2, 0, 3) for n in ("q", "k", "p"))  # (B, H, T, d)
    pos, kpm = t["pos"], t["kpm"]                                   # (2T-1, H, 4), (B, T)

    def score_mod(score, b, h, qi, kj):
        n = T - 1 - qi + kj
        rel = (p[b, h, qi, 0] * pos[n, h, 0] + p[b, h, qi, 1] * pos[n, h, 1]
               + p[b, h, qi, 2] * pos[n, h, 2] + p[b, h, qi, 3] * pos[n, h, 3])
        return torch.where(kpm[b, kj], -1000.0, score + rel)

    def head0_mod(score, b, h, qi, kj):
        return score_mod(score, b, h * 0, qi, kj)

    x = _pad_last(t["x"].permute(1, 0, 2, 3))                      # (B, 1, T, hw)
    nla = flex(q[:, :1], k[:, :1], x, score_mod=head0_mod, scale=1.0)
    dv = t["v1"].shape[-1]
    v12 = _pad_last(torch.cat([t["v1"], t["v2"]], -1).permute(1, 0, 2, 3))  # (B, H, T, 2dv)
    sa = flex(q, k, v12, score_mod=score_mod, scale=1.0)
    return nla, sa[..., :dv], sa[..., dv:2 * dv]


_COMPILED = {}


def _layer_fn(impl):
    if impl == "flex_forward":
        return _flex_layer
    if impl != "reference_compile":
        return _layer
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_layer, dynamic=False)
    return _COMPILED["fn"]


def attention_cases(device: str = "cuda", Ts=(250, 750, 1500), batch: int = 30, stacks=(0, 3)) -> List[AttentionCase]:
    return [AttentionCase(f"attn_M{s}_T{T}_B{batch}", T, batch, STACKS[s]["H"], STACKS[s]["D"], device)
            for s in stacks for T in Ts]


def measure_attention(step: Callable[[], None], device: str, warmup: int = 2, iters: int = 5) -> dict:
    """Median ms per iteration and, on CUDA, peak memory above the starting allocation (MB)."""
    out = dict(ms=statistics.median(time_calls(step, device, warmup, iters)))
    if device == "cuda":
        out["peak_mb"] = peak_memory_mb(step, device)[1]
    return out


def model_saved_bytes(preset: str, seconds: float, batch: int) -> dict:
    """{config: MiB saved for backward} of AsrModel.forward_encoder in training mode (fp32, CPU)."""
    import os

    os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    import triton.runtime.interpreter as interp

    interp.InterpretedFunction.run = lambda self, *args, **kwargs: None  # shapes only, see docstring
    from bench.saved_bytes import saved_bytes
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig
    from zipformer_fast.runtime import configure

    model = AsrModel(ZipformerConfig.preset(preset), vocab_size=500, use_transducer=True, use_ctc=True)
    frames = int(seconds * 100)
    result = {}
    for backend, mode in (("reference", "auto"), ("triton", "auto"), ("triton", "recompute"),
                          ("triton", "materialize")):
        torch.manual_seed(0)
        feats = torch.randn(batch, frames, 80)
        lens = torch.full((batch,), frames, dtype=torch.long)
        with configure(attention_mode=mode):
            counted = saved_bytes(model, feats, lens, backend, fake=False)
        result[f"{backend}/{mode}"] = counted["bytes"] / 2**20
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--saved-bytes", default="", metavar="PRESET",
                    help="instead of timing: saved-for-backward MiB of a whole model (see docstring)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--T", type=int, nargs="+", default=[250, 750, 1500])
    ap.add_argument("--batch", type=int, default=30)
    ap.add_argument("--stacks", type=int, nargs="+", default=[0, 3])
    ap.add_argument("--impls", nargs="+", default=list(IMPLS))
    ap.add_argument("--passes", nargs="+", default=list(PASSES))
    ap.add_argument("--iters", type=int, default=5)
    add_out_dir_argument(ap, default_help="bench/results/<device>; with --saved-bytes, bench/results/cpu")
    a = ap.parse_args(argv)
    if a.saved_bytes:
        res = model_saved_bytes(a.saved_bytes, a.seconds, a.batch)
        for k, v in res.items():
            print(f"{a.saved_bytes} {a.seconds:g}s x{a.batch} {k:22s} {v:9.1f} MiB "
                  f"({100 * v / res['reference/auto']:.0f}% of reference)")
        name = f"saved_bytes_{a.saved_bytes}_{a.seconds:g}s_b{a.batch}_attention_modes.json"
        write_json(results_dir("cpu", a.out_dir) / name,
                   dict(preset=a.saved_bytes, seconds=a.seconds, batch=a.batch, **provenance(__file__, argv),
                        MiB=res, over_reference={k: v / res["reference/auto"] for k, v in res.items()}))
        return 0
    device = pick_device().type
    table = ResultTable(results_dir(device, a.out_dir), "cases_attention")
    meta = provenance(__file__, argv, device)
    for case in attention_cases(device, a.T, a.batch, a.stacks):
        for pass_ in a.passes:
            for impl in a.impls:
                if impl in FORWARD_ONLY and pass_ != "fwd":
                    continue
                step = None
                try:
                    step = case.make(impl, pass_)
                    res = measure_attention(step, device, iters=a.iters)
                except torch.cuda.OutOfMemoryError if device == "cuda" else MemoryError:
                    res = dict(ms=float("nan"), error="OOM")
                del step
                if device == "cuda":
                    torch.cuda.empty_cache()
                row = dict(case=case.name, pass_=pass_, impl=impl, **res)
                print(row, flush=True)
                table.add(dict(row, **meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
