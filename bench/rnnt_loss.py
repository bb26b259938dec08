"""Benchmark + cross-check of the pruned RNN-T loss pipeline (zipformer_fast/asr/rnnt_loss.py):
the mutual-information recursion with the torch wavefront vs the Triton kernels, and icefall's
per-step loss work (smoothed simple loss with return_grad -> prune ranges -> pruned loss,
forward + backward) at a LibriSpeech-like shape (B=50, T=250 frames at 25 Hz, S<=80 BPE tokens,
V=500, prune range 5).

Usage: python bench/rnnt_loss.py [--B 50 --S 80 --T 250 --V 500 --iters 10]
Prints the median ms of one line per measurement (bench/harness.py's timing loop, 2 warm-up calls);
on CUDA it also prints the max |difference| between backends. Nothing is written to disk.
"""
import argparse
import pathlib
import statistics
import sys

if __package__ in (None, ""):  # run as `python bench/rnnt_loss.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import pick_device, time_calls  # noqa: E402
from zipformer_fast.ops.mutual_information import mutual_information_recursion  # noqa: E402
from zipformer_fast.asr.rnnt_loss import get_rnnt_prune_ranges, rnnt_loss_pruned, rnnt_loss_smoothed  # noqa: E402
from zipformer_fast.runtime import use_backend  # noqa: E402


def median_ms(fn, iters, device) -> float:
    return statistics.median(time_calls(fn, device, warmup=2, iters=iters))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--B", type=int, default=50)
    p.add_argument("--S", type=int, default=80)
    p.add_argument("--T", type=int, default=250)
    p.add_argument("--V", type=int, default=500)
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args(argv)
    device = pick_device()
    g = torch.Generator(device="cpu").manual_seed(0)
    B, S, T, V = a.B, a.S, a.T, a.V
    boundary = torch.zeros(B, 4, dtype=torch.int64)
    boundary[:, 2] = torch.randint(S // 2, S + 1, (B,), generator=g)
    boundary[:, 3] = torch.randint(T * 3 // 5, T + 1, (B,), generator=g)
    boundary[0, 2:] = torch.tensor([S, T])
    boundary = boundary.to(device)
    symbols = torch.randint(1, V, (B, S), generator=g).to(device)
    lm = torch.randn(B, S + 1, V, generator=g).to(device).requires_grad_()
    am = torch.randn(B, T, V, generator=g).to(device).requires_grad_()
    logits = torch.randn(B, T, 5, V, generator=g).to(device).requires_grad_()
    px = torch.randn(B, S, T + 1, generator=g).to(device)
    py = torch.randn(B, S + 1, T, generator=g).to(device)

    def loss_step():
        simple, (gx, gy) = rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary,
                                              reduction="sum", return_grad=True)
        ranges = get_rnnt_prune_ranges(gx, gy, boundary, 5)
        pruned = rnnt_loss_pruned(logits, symbols, ranges, 0, boundary, reduction="sum")
        (0.5 * simple + pruned).backward()
        return simple.detach(), pruned.detach(), ranges

    with use_backend("reference"), torch.no_grad():
        _, (gx0, gy0) = rnnt_loss_smoothed(lm, am, symbols, 0, 0.25, 0.0, boundary,
                                           return_grad=True)
        fixed_ranges = get_rnnt_prune_ranges(gx0, gy0, boundary, 5)

    backends = ["reference"] + (["triton"] if device.type == "cuda" else [])
    results = {}
    for name in backends:
        with use_backend(name):
            for rg in (False, True):
                ms = median_ms(lambda: mutual_information_recursion(px, py, boundary, return_grad=rg),
                           a.iters, device)
                print(f"{device.type} {name:9s} recursion B={B} S={S} T={T} return_grad={rg}: "
                      f"{ms:.2f} ms")
            ms = median_ms(loss_step, a.iters, device)
            print(f"{device.type} {name:9s} smoothed+ranges+pruned fwd+bwd V={V}: {ms:.2f} ms")
            lm.grad = am.grad = logits.grad = None
            simple, pruned, ranges = loss_step()
            with torch.no_grad():
                fixed = rnnt_loss_pruned(logits, symbols, fixed_ranges, 0, boundary,
                                         reduction="none")
            results[name] = (mutual_information_recursion(px, py, boundary, return_grad=True),
                             simple, pruned, ranges, lm.grad.clone(), logits.grad.clone(), fixed)
            lm.grad = am.grad = logits.grad = None
    if len(results) == 2:
        (t_ref, (gx_ref, gy_ref)), s_ref, p_ref, r_ref, lmg_ref, lg_ref, f_ref = results["reference"]
        (t_tri, (gx_tri, gy_tri)), s_tri, p_tri, r_tri, lmg_tri, lg_tri, f_tri = results["triton"]
        # Ranges come from an argmax over occupation sums: with random (diffuse) inputs,
        # near-ties may flip between backends, so the pruned loss is also compared on fixed ranges.
        print("pruned loss per utterance on identical ranges: max|diff| %.3g (max value %.1f)"
              % ((f_ref - f_tri).abs().max(), f_ref.abs().max()))
        print("max|diff| total %.3g  px_grad %.3g  py_grad %.3g  simple %.3g (of %.1f)  pruned "
              "%.3g (of %.1f)  ranges equal %s  lm.grad %.3g  logits.grad %.3g" % (
                  (t_ref - t_tri).abs().max(), (gx_ref - gx_tri).abs().max(),
                  (gy_ref - gy_tri).abs().max(), (s_ref - s_tri).abs(), s_ref,
                  (p_ref - p_tri).abs(), p_ref, bool(torch.equal(r_ref, r_tri)),
                  (lmg_ref - lmg_tri).abs().max(), (lg_ref - lg_tri).abs().max()))


if __name__ == "__main__":
    main()
