"""Kernel launches per Zipformer encoder step, reference vs fused: aten ops + Triton launches.

Counts, for one `forward_encoder` (inference: eval mode under torch.no_grad) and one training step
(train mode, forward_encoder then backward of the summed output; no loss head, no optimizer), with
backend "reference" and "triton":

- aten ops that launch work and Triton launches, counted by bench/launch_counter.py (views and
  allocations excluded; fused ops seen as their custom ops, their kernels counted as Triton
  launches). The kernels really run (interpreter), so values and data-dependent branches are real.

Runs on the CPU with TRITON_INTERPRET=1 (set here) on a short input (default 1 s, batch 2) to
stay within minutes: no op of the encoder loops over T or B in Python, so the number of launches
should not depend on them, only the work per launch (not verified across lengths). Each count is
of a second step: a first, uncounted step of the same shape fills what a running model keeps from
step to step (the positional-encoding tables, the GEMMs' chosen launch configs). The model's
random decisions (layer skips, Balancer/Whiten firing) are seeded (--seed) and identical for both
backends.

    python bench/launch_count.py [--preset M] [--seconds 1] [--batch 2] [--seed 0] [--batch-count 100000]
                                 [--modes inference,training] [--label after]
                                 [--out-dir bench/results/cpu]   # -> <out-dir>/launch_count.json
"""
import argparse
import os
import pathlib
import random
import sys

if __package__ in (None, ""):  # run as `python bench/launch_count.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import torch  # noqa: E402

from bench.harness import add_out_dir_argument, provenance, results_dir, write_labelled_entry  # noqa: E402
from bench.launch_counter import counting  # noqa: E402

def _step(model, features, lens, training: bool, seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    if training:
        model.zero_grad(set_to_none=True)  # as a training loop does: no accumulation into old grads
        out, _ = model.forward_encoder(features, lens)
        out.sum().backward()
    else:
        with torch.no_grad():
            model.forward_encoder(features, lens)


def step_counts(model, features, lens, backend: str, training: bool, seed: int) -> dict:
    from zipformer_fast import use_backend

    model.train(training)
    with use_backend(backend):
        _step(model, features, lens, training, seed)  # warm-up: fills the per-length caches
        with counting() as c:
            _step(model, features, lens, training, seed)
    aten, tri = sum(c["aten"].values()), sum(c["triton"].values())
    return {"aten_ops": aten, "triton_launches": tri, "total": aten + tri,
            "top_aten": dict(c["aten"].most_common(30)), "triton_by_kernel": dict(c["triton"].most_common()),
            "custom_op_calls": dict(c["custom"])}


def main(argv=None) -> dict:
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="M")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-count", type=float, default=100000.0,
                    help="set_batch_count (schedules: skip rates, Balancer probabilities); default: late in training")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    ap.add_argument("--label", default="after", help="entry name in the output file")
    ap.add_argument("--modes", default="inference,training")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    torch.manual_seed(0)
    cfg = ZipformerConfig.preset(a.preset)
    model = AsrModel(cfg, vocab_size=cfg.vocab_size, use_transducer=True, use_ctc=True, validate_inputs=False)
    if a.batch_count is not None:
        from zipformer_fast.nn import set_batch_count
        set_batch_count(model, a.batch_count)
    T = int(round(a.seconds * 100))
    features = torch.randn(a.batch, T, 80)
    lens = torch.full((a.batch,), T, dtype=torch.long)
    res = {}
    for mode_name, training in (("inference", False), ("training", True)):
        if mode_name not in a.modes.split(","):
            continue
        for backend in ("reference", "triton"):
            res[f"{mode_name}_{backend}"] = r = step_counts(model, features, lens, backend, training, a.seed)
            print(f"{mode_name:9s} {backend:9s} aten {r['aten_ops']:6d}  triton {r['triton_launches']:5d}  "
                  f"total {r['total']:6d}", flush=True)
        ratio = res[f"{mode_name}_triton"]["total"] / res[f"{mode_name}_reference"]["total"]
        res[f"{mode_name}_ratio"] = round(ratio, 3)
        print(f"{mode_name:9s} fused / reference = {ratio:.3f}", flush=True)
    entry = {"preset": a.preset, "seconds": a.seconds, "batch": a.batch, "seed": a.seed, "batch_count": a.batch_count,
             "results": res, **provenance(__file__, argv), "device": "cpu (TRITON_INTERPRET=1)"}
    if not a.no_write:
        write_labelled_entry(results_dir("cpu", a.out_dir) / "launch_count.json", a.label,
                             "aten ops that launch work (views/allocations excluded; TorchDispatchMode) + "
                             "Triton launches (interpreter launch counter), one forward_encoder (inference: eval, "
                             "no_grad) or forward_encoder + backward of the summed output (training); see "
                             "bench/launch_count.py", entry)
    return entry


if __name__ == "__main__":
    main()
