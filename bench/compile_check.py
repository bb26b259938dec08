"""torch.compile readiness of the XS Zipformer on CPU: graph breaks, recompilations, compiled = eager.

1. Graph breaks of `torch._dynamo.explain(model.forward_encoder)` for the reference and the triton
   backend (the latter under TRITON_INTERPRET=1 on CPU: tracing only needs the custom ops' fake
   impls), in eval (inference, no_grad), eval with gradients (Balancers act in eval too) and training.
2. A compiled training loop (`torch.compile(model.forward_encoder, fullgraph=True, dynamic=True)`,
   dynamo backend --backend, default aot_eager) over --steps steps in which everything icefall varies
   varies: batch count (every ScheduledFloat) advancing each step, Balancer/Whiten firing, layer and
   module skips, dropout, feature masks, T (40..89 frames) and B (2..4; a batch of 1 would cost one
   more compilation: dynamic shapes specialise sizes 0 and 1), under zipformer_fast's
   compile_settings() (floats specialised). Counted: compilations (dynamo frames
   compiled) and, for each recompilation, the guard that failed (dynamo's "recompiles" log). Runs
   first.
3. The same loop in eager mode with device-side randomness (what the compiled graph computes) from
   the same seeds and initial weights: per-step losses, largest relative difference, the number
   of leading steps whose losses are bitwise equal, and the steps whose random decisions (every
   Balancer/Whiten/limit_param_value firing) are all equal. Two training loops drift apart by
   round-off that SGD amplifies from step to step, so each step is also compared on its own:
   eager's loss from the compiled loop's weights, buffers and RNG state at the start of the step.

    python bench/compile_check.py [--steps 50] [--backend aot_eager] [--out-dir bench/results/cpu]

writes <out-dir>/compile_check.json, rewritten after every stage.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python bench/compile_check.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from zipformer_fast.compile_settings import compile_settings  # noqa: E402

from bench.harness import add_out_dir_argument, provenance, results_dir, write_json  # noqa: E402

from zipformer_fast import use_backend  # noqa: E402
from zipformer_fast.asr.model import AsrModel  # noqa: E402
from zipformer_fast.config import ZipformerConfig  # noqa: E402
from zipformer_fast.nn import set_batch_count  # noqa: E402
from zipformer_fast.nn.randomness import use_device_side_randomness  # noqa: E402


def xs_model(seed: int = 0) -> AsrModel:
    torch.manual_seed(seed)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True)


def graph_breaks(backend: str, mode: str) -> dict:
    """mode: "inference" (eval, no_grad), "eval_grad" (eval, gradients on) or "train"."""
    model = xs_model()
    model.train(mode == "train")
    if mode == "train":
        set_batch_count(model, 500.0)
    x, lens = torch.randn(2, 60, 80), torch.tensor([60, 50])
    torch._dynamo.reset()
    t0 = time.time()
    with use_backend(backend), torch.set_grad_enabled(mode != "inference"):
        e = torch._dynamo.explain(model.forward_encoder)(x, lens)
    reasons = sorted({str(b.reason).split("\n")[0][:200] for b in e.break_reasons})
    return {"graph_breaks": e.graph_break_count, "graphs": e.graph_count, "reasons": reasons,
            "seconds": round(time.time() - t0, 1)}


def batches(steps: int, seed: int = 1):
    """(features, lengths, batch_count) per step: T and B vary, the batch count advances."""
    g = torch.Generator().manual_seed(seed)
    for i in range(steps):
        # B >= 2: dynamic shapes specialise a size of 1, so a batch of one would compile once more.
        B = int(torch.randint(2, 5, (1,), generator=g))
        T = int(torch.randint(40, 90, (1,), generator=g))
        lens = torch.randint(max(9, T - 20), T + 1, (B,), generator=g)
        lens[0] = T
        yield torch.randn(B, T, 80, generator=g), lens, 50.0 * i


def _surrogate_loss(model: AsrModel, out, out_lens):
    valid = (torch.arange(out.shape[1])[None, :] < out_lens[:, None]).unsqueeze(-1)
    return (out.square() * valid).sum() / valid.sum() + model.ctc_log_probs(out).mean().neg() * 1e-3


def _snapshot(model: AsrModel) -> dict:
    """Parameters and all buffers (the Whiten probabilities are non-persistent buffers) and the RNG."""
    tensors = {n: t.detach().clone() for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    return {"tensors": tensors, "rng": torch.get_rng_state()}


def train_loop(model: AsrModel, encode, data, backend: str, seed: int = 2, decisions: list = None,
               snapshots: list = None) -> list:
    """Plain SGD on a surrogate loss over `data` ((features, lengths, batch_count) per step);
    returns the per-step losses. `decisions`, if given, receives per step the firing of every
    Balancer, Whiten and limit_param_value (their `fired` buffers, written by device-side draws);
    `snapshots`, if given, the model's state and the RNG state at the start of every step."""
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    losses = []
    model.train()
    with use_backend(backend):
        for x, lens, bc in data:
            set_batch_count(model, bc)
            if snapshots is not None:
                snapshots.append(_snapshot(model))
            out, out_lens = encode(x, lens)
            loss = _surrogate_loss(model, out, out_lens)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if decisions is not None:
                decisions.append(torch.stack([b for n, b in model.named_buffers() if n.endswith("fired")]).tolist())
    return losses


def eager_losses_from_states(model: AsrModel, snapshots: list, data, backend: str) -> list:
    """Per step, eager's loss (device-side randomness) from the compiled loop's state at the start
    of that step: weights, buffers and RNG state loaded, so each step is compared on its own,
    without the drift that a whole loop accumulates."""
    losses = []
    model.train()
    named = dict(list(model.named_parameters()) + list(model.named_buffers()))
    with use_backend(backend), use_device_side_randomness(), torch.no_grad():
        for snap, (x, lens, bc) in zip(snapshots, data):
            for n, t in snap["tensors"].items():
                named[n].copy_(t)
            torch.set_rng_state(snap["rng"])
            set_batch_count(model, bc)
            with torch.enable_grad():  # Balancers and Whitens draw only on inputs that need grad
                out, out_lens = model.forward_encoder(x, lens)
                losses.append(_surrogate_loss(model, out, out_lens).item())
    return losses


@contextlib.contextmanager
def recompile_log():
    """Yields the list of dynamo's recompilation messages (function, and the guards that failed)
    logged inside the block."""
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage().replace(f"{ROOT}/", ""))

    torch._logging.set_logs(recompiles=True)
    logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    handler = Collect()
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        torch._logging.set_logs()


def compiled_vs_eager(steps: int, dynamo_backend: str, backend: str) -> dict:
    from torch._dynamo.testing import CompileCounterWithBackend
    base = xs_model()
    compiled_model, eager_model = copy.deepcopy(base), copy.deepcopy(base)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend(dynamo_backend)
    compiles = []  # (dynamo's compile id "frame/recompile", the graph's inputs) per compilation

    def record_compile(gm, example_inputs):
        inputs = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        compiles.append([str(torch._guards.CompileContext.current_compile_id()), inputs[:4], len(inputs)])
        return counter(gm, example_inputs)

    compiled_encode = torch.compile(compiled_model.forward_encoder, fullgraph=True, dynamic=True, backend=record_compile)
    count_after_step = []

    def encode(x, lens):
        with compile_settings():
            out = compiled_encode(x, lens)
        count_after_step.append(counter.frame_count)
        return out

    t0 = time.time()
    compiled_fired, eager_fired, snapshots = [], [], []
    stepwise_model = copy.deepcopy(base)
    with recompile_log() as recompilations:
        compiled = train_loop(compiled_model, encode, batches(steps), backend, decisions=compiled_fired,
                              snapshots=snapshots)
    t_compiled = time.time() - t0
    t0 = time.time()
    with use_device_side_randomness():
        eager = train_loop(eager_model, eager_model.forward_encoder, batches(steps), backend, decisions=eager_fired)
    t_eager = time.time() - t0
    stepwise = eager_losses_from_states(stepwise_model, snapshots, batches(steps), backend)
    diffs = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(compiled, eager)]
    step_diffs = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(compiled, stepwise)]
    exact = next((i for i, (a, b) in enumerate(zip(compiled, eager)) if a != b), len(compiled))
    return {"steps": steps, "dynamo_backend": dynamo_backend, "ops_backend": backend,
            "compilations": counter.frame_count, "recompilations": recompilations,
            "compiled_at_steps": [i for i, n in enumerate(count_after_step) if n > (count_after_step[i - 1] if i else 0)],
            "compiles": compiles, "losses_compiled": compiled, "losses_eager": eager,
            "max_rel_loss_diff": max(diffs), "first_step_rel_loss_diff": diffs[0],
            "losses_bitwise_equal": compiled == eager, "steps_bitwise_equal": exact,
            "losses_eager_from_compiled_states": stepwise, "max_rel_loss_diff_per_step": max(step_diffs),
            "random_decisions_per_step": len(eager_fired[0]) if eager_fired else 0,
            "steps_with_equal_random_decisions": sum(a == b for a, b in zip(compiled_fired, eager_fired)),
            "seconds_compiled_loop": round(t_compiled, 1), "seconds_eager_loop": round(t_eager, 1)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--backend", default="aot_eager", help="dynamo backend of the training loop")
    ap.add_argument("--ops-backends", default="reference,triton")
    ap.add_argument("--modes", default="inference,eval_grad,train")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    a = ap.parse_args(argv)
    result = {**provenance(__file__, argv), "triton_interpret": os.environ.get("TRITON_INTERPRET"),
              "graph_breaks": {}}
    out = results_dir("cpu", a.out_dir) / "compile_check.json"

    def save():
        write_json(out, result)

    if a.steps > 0:
        r = compiled_vs_eager(a.steps, a.backend, "reference")
        result["training_loop"] = r
        print(f"compiled training loop: {r['compilations']} compilations over {r['steps']} steps; "
              f"max relative loss difference vs eager {r['max_rel_loss_diff']:.3g}", flush=True)
        save()
    for ops_backend in a.ops_backends.split(","):
        for mode in a.modes.split(","):
            r = graph_breaks(ops_backend, mode)
            result["graph_breaks"][f"{ops_backend}/{mode}"] = r
            print(f"graph breaks {ops_backend}/{mode}: {r['graph_breaks']} ({r['seconds']} s)", flush=True)
            save()
    return result


if __name__ == "__main__":
    main()
