"""Host (Python) time per fused-op call, with the Triton launches stubbed out.

Method: TRITON_INTERPRET=1 is set before triton is imported, so every @triton.jit kernel is an
`InterpretedFunction`; its `run` (what `kernel[grid](...)` calls, also through an autotuner) is
replaced by a counter that evaluates the grid and returns at once. Everything else runs for
real on the CPU: our dispatch, argument checks, allocations, torch ops around the kernels and
the autograd machinery. Inputs are tiny (a few hundred elements) so the CPU cost of any torch op
is its dispatch overhead, which is what a GPU run would pay on the host too. Each op is timed
(time.perf_counter_ns per call, torch.set_num_threads(1)):

    forward         inputs require grad, grad mode on (what training pays)
    forward_nograd  under torch.no_grad() (inference)
    backward        the backward node alone: y.grad_fn.apply(dy) under torch.no_grad() (our
                    backward formula, its allocations and launches: what the autograd engine
                    calls for the node, with grad mode off as the engine sets it unless
                    create_graph=True)
    backward_engine torch.autograd.grad(y, inputs, dy) on a fresh forward's graph (adds the
                    engine's own per-graph cost, see the calibration rows; the forward is not timed)

median µs per call after a warm-up (the smallest of 20 medians over --iters / 20 calls each,
taken round-robin over all ops: the quietest spell of a shared machine, see Timings), plus the number of Triton launches per call.
Calibration rows, same process: torch.empty_like of the tiny tensor, a trivial autograd.Function
(save x, return empty_like) forward, its backward node, and autograd.grad on it: the floor any
autograd-recorded op pays on this machine (a loaded 2-core CI box is ~2-3x slower than a
desktop core, so compare ops against these rather than across machines).

    python bench/host_overhead.py [--label after] [--iters 2000] [--ops swoosh_l,bias_norm]
                                  [--out-dir bench/results/cpu]

On the 2-core CI VM one vCPU is at times ~1.6x slower for a whole process (the calibration rows
show it); recorded runs are pinned with `taskset -c 1` (the entry lists the CPU affinity).

The output file, <out-dir>/host_overhead.json, keeps one entry per --label (e.g. "before" / "after"), so two runs of different
code versions land side by side.
"""
import argparse
import os
import pathlib
import statistics
import sys

if __package__ in (None, ""):  # run as `python bench/host_overhead.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported anywhere

import torch  # noqa: E402

from bench.harness import add_out_dir_argument, host_times_us, provenance, results_dir, write_labelled_entry  # noqa: E402

LAUNCHES = [0]


def stub_triton_launches() -> None:
    """Replace the interpreter's kernel launch with a counter (the grid is still evaluated)."""
    from triton.runtime.interpreter import InterpretedFunction

    def run(self, *args, grid, warmup, **kwargs):
        if callable(grid):
            grid(dict(zip(self.arg_names, args), **kwargs))
        LAUNCHES[0] += 1

    InterpretedFunction.run = run


def _r(shape, grad=True, dtype=torch.float32):
    return torch.randn(shape, dtype=dtype).requires_grad_(grad)


def op_calls():
    """name -> (make inputs, call). Shapes: tiny, Zipformer-like layouts (T, B, C)."""
    from zipformer_fast.ops.bias_norm import bias_norm
    from zipformer_fast.ops.bias_norm_bypass import bias_norm_bypass
    from zipformer_fast.ops.bypass import bypass, upsample_bypass
    from zipformer_fast.ops.downsample import simple_downsample
    from zipformer_fast.ops.swoosh import swoosh_l, swoosh_r
    from zipformer_fast.ops import activation_linear as al

    T, B, C = 8, 2, 16

    def p(shape):
        return torch.rand(shape).requires_grad_()

    return {
        "swoosh_l": (lambda: [_r((T, B, C))], lambda x: swoosh_l(x)),
        "swoosh_r_compact": (lambda: [_r((T, B, C))], lambda x: swoosh_r(x, compact_derivative=True)),
        "bias_norm": (lambda: [_r((T, B, C)), torch.tensor(0.3).requires_grad_(), p((C,))],
                      lambda x, ls, b: bias_norm(x, ls, b)),
        "bypass": (lambda: [_r((T, B, C)), _r((T, B, C)), p((C,))], lambda xo, x, c: bypass(xo, x, c)),
        "upsample_bypass": (lambda: [_r((T, B, C)), _r((T // 2, B, C)), p((C,))],
                            lambda xo, y, c: upsample_bypass(xo, y, 2, c)),
        "bias_norm_bypass": (lambda: [_r((T, B, C)), _r((T, B, C)), torch.tensor(0.3).requires_grad_(), p((C,)), p((C,))],
                             lambda xo, x, ls, b, c: bias_norm_bypass(xo, x, ls, b, c)),
        # the layer end in training: icefall's per-sequence layer skipping makes the scale (B, C)
        "bias_norm_bypass_per_sequence": (
            lambda: [_r((T, B, C)), _r((T, B, C)), torch.tensor(0.3).requires_grad_(), p((C,)), p((B, C))],
            lambda xo, x, ls, b, c: bias_norm_bypass(xo, x, ls, b, c)),
        "simple_downsample": (lambda: [_r((T, B, C)), p((2,))], lambda x, b: simple_downsample(x, b)),
        "act_dropout_linear": (lambda: [_r((T, B, C)), _r((C, C)), _r((C,)), (torch.rand(1, B, C) > 0.1).float()],
                               lambda x, w, b, m: al.activation_dropout_linear(x, w, b, "SwooshL", m)),
        "linear_swoosh": (lambda: [_r((T, B, C), False), _r((C, C), False), _r((C,), False)],
                          lambda x, w, b: al.linear_swoosh(x, w, b, "SwooshL")),
    }


ROUNDS = 20


class Timings:
    """Every (op, quantity) timing of a run, measured round-robin: ROUNDS passes over all of them,
    iters // ROUNDS calls of each per pass, and each keeps the smallest of its per-pass medians.
    On a shared VM every host operation slows down ~1.6x for spells of tens of ms to tens of
    seconds (the fastest single call of a spell is slow too, and the calibration rows move with
    it: it is the machine, not the code); a pass over everything is ~0.1-0.3 s, so each timing
    gets ROUNDS chances, spread over the whole run, to land in a quiet spell."""

    def __init__(self, iters: int):
        self.calls = max(1, iters // ROUNDS)
        self.jobs = []  # (key, quantity, fn, setup, grad mode)

    def add(self, key: str, quantity: str, fn, setup=None, grad: bool = True) -> None:
        self.jobs.append((key, quantity, fn, setup, grad))

    def run(self) -> dict:
        best, launches = {}, {}
        for _ in range(ROUNDS):
            for key, quantity, fn, setup, grad in self.jobs:
                LAUNCHES[0] = 0
                with torch.set_grad_enabled(grad):  # entered once per pass, not timed
                    m = statistics.median(host_times_us(fn, self.calls, setup))
                launches[(key, quantity)] = LAUNCHES[0] / self.calls
                best[(key, quantity)] = min(m, best.get((key, quantity), float("inf")))
        out = {}
        for key, quantity, *_ in self.jobs:
            row = out.setdefault(key, {})
            row[f"{quantity}_us"] = round(best[(key, quantity)], 2)
            if quantity in ("forward", "forward_nograd", "backward"):
                row[f"launches_{quantity}"] = launches[(key, quantity)]
        return out


class _Trivial(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.empty_like(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return torch.empty_like(g)


def add_calibration(timings: Timings) -> None:
    x = _r((8, 2, 16))
    g = torch.randn(8, 2, 16)
    y = _Trivial.apply(x)
    timings.add("calibration", "empty_like", lambda: torch.empty_like(x))
    timings.add("calibration", "trivial_function_forward", lambda: _Trivial.apply(x))
    timings.add("calibration", "trivial_function_backward", lambda: y.grad_fn.apply(g), grad=False)
    timings.add("calibration", "trivial_function_backward_engine", lambda y: torch.autograd.grad(y, [x], g),
                setup=lambda: _Trivial.apply(x))


def add_op(timings: Timings, name, make, call) -> None:
    """Warm the op up and queue its timings (forward / forward_nograd / backward node / engine)."""
    inputs = make()
    grads_of = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    for _ in range(20):
        call(*inputs)
    with torch.no_grad():
        for _ in range(20):
            call(*inputs)
    if grads_of:
        timings.add(name, "forward", lambda: call(*inputs))
    timings.add(name, "forward_nograd", lambda: call(*inputs), grad=False)
    if grads_of:
        y = call(*inputs)
        dy = torch.randn_like(y)

        def fresh():
            return call(*inputs)

        def bwd(y):
            torch.autograd.grad(y, grads_of, dy)

        for _ in range(20):
            bwd(fresh())
        node = fresh().grad_fn
        try:
            node.apply(dy)
            grads = (dy,)
        except TypeError:  # a node with a second (non-differentiable) output wants its grad too
            grads = (dy, None)
        timings.add(name, "backward", lambda: node.apply(*grads), grad=False)
        timings.add(name, "backward_engine", bwd, setup=fresh)


TARGET_FORWARD_US, TARGET_BACKWARD_US = 10.0, 15.0  # per fused-op call, forward (either mode) / backward node


def within_targets(row: dict) -> bool:
    """Whether a row's forward (with and without autograd) and backward-node times are within the
    targets; quantities an op does not have (no backward for an inference-only op) are skipped."""
    return (all(row[k] <= TARGET_FORWARD_US for k in ("forward_us", "forward_nograd_us") if k in row)
            and row.get("backward_us", 0.0) <= TARGET_BACKWARD_US)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--ops", default="", help="comma-separated subset of the cases")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    stub_triton_launches()
    only = {s for s in a.ops.split(",") if s}
    from zipformer_fast import use_backend

    timings = Timings(a.iters)
    add_calibration(timings)
    with use_backend("triton"):
        for name, (make, call) in op_calls().items():
            if not only or name in only:
                add_op(timings, name, make, call)
        measured = timings.run()
    calib = measured.pop("calibration")
    print("calibration " + "  ".join(f"{k}={v}" for k, v in calib.items()), flush=True)
    results = measured
    for row in results.values():
        row["within_targets"] = within_targets(row)
    for name, row in results.items():
        print(f"{name:30s} " + "  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    entry = {"results_us": results, "calibration_us": calib, "iters": a.iters,
             "timing": f"smallest of {ROUNDS} per-round medians, ops timed round-robin (Timings)",
             "cpu_affinity": sorted(os.sched_getaffinity(0)),
             "note": "backward node timed with grad mode off, as the autograd engine runs it (entries before "
                     "after_route_and_backward_once timed it with grad mode on)",
             **provenance(__file__, argv)}
    if not a.no_write:
        write_labelled_entry(results_dir("cpu", a.out_dir) / "host_overhead.json", a.label,
                             "TRITON_INTERPRET=1 with InterpretedFunction.run replaced by a counter; tiny CPU "
                             "tensors; median us per call (see bench/host_overhead.py)", entry)
    return entry


if __name__ == "__main__":
    main()
