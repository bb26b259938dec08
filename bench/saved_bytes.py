"""Activation memory of one training forward: bytes saved for backward, per backend.

Counts every tensor autograd saves once per storage (bench/memory.py's saved_for_backward: a saved
view keeps its whole storage alive, so the storage's bytes are counted), parameters and the input
features excluded. Deterministic and device-independent: the training-memory measure on a CPU
machine.

With --fake (default) the model runs under FakeTensorMode: no arithmetic, no kernels, only shapes
and the ops' registered fake implementations, so Zipformer-M on a 10 s utterance takes seconds.
tests/test_saved_bytes.py checks that the fake count equals a real (interpreter) run on XS.

    TRITON_INTERPRET=1 python bench/saved_bytes.py [--preset M] [--seconds 10] [--batch 1] [--real]
                                                   [--attention-reference] [--out-dir DIR]
                                                   [--seeds 0 1 2] [--batch-counts 0 4000 20000]
The triton backend needs triton importable and, on CPU, TRITON_INTERPRET=1. --attention-reference
keeps the attention ops on their reference in both runs (isolates the memory-bound/GEMM ops).
Writes <out-dir>/saved_bytes_<preset>_<seconds>s_b<batch>[_attnref][_sweep].json (default
bench/results/cpu/) and prints a table.
"""
import argparse
import contextlib
import pathlib
import random
import sys

if __package__ in (None, ""):  # run as `python bench/saved_bytes.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import add_out_dir_argument, provenance, results_dir, write_json  # noqa: E402
from bench.memory import saved_for_backward  # noqa: E402
from zipformer_fast import use_backend  # noqa: E402


def saved_bytes(model, features, feature_lens, backend: str, fake: bool = True, seed: int = 0,
                observe=None) -> dict:
    """{'bytes': total, 'tensors': count} saved by one training forward of model.forward_encoder.
    observe(tensor, storage_key), if given, is called for every counted tensor (each time it is
    saved; bench/saved_bytes_breakdown.py uses it to say who saved what)."""
    model.train()
    mode = contextlib.nullcontext()
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode
        mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        tensors = dict(model.named_parameters())
        n_params = len(tensors)
        tensors.update(model.named_buffers())
        if fake:  # fake copies, kept alive here so that their storages stay distinct
            tensors = {n: mode.from_tensor(t) for n, t in tensors.items()}
            features, feature_lens = mode.from_tensor(features), mode.from_tensor(feature_lens)
        params = list(tensors.values())[:n_params]
        torch.manual_seed(seed)
        random.seed(seed)
        validate = getattr(model, "validate_inputs", None)
        if fake and validate is not None:
            model.validate_inputs = False  # data-dependent checks cannot run on fake tensors
        try:
            with use_backend(backend), saved_for_backward(exclude=[*params, features], observe=observe) as saved:
                if fake:
                    torch.func.functional_call(_Encoder(model), {f"asr.{n}": t for n, t in tensors.items()},
                                               (features, feature_lens))
                else:
                    model.forward_encoder(features, feature_lens)
        finally:
            if validate is not None:
                model.validate_inputs = validate
            if fake:
                _drop_fake_caches(model)
    return {"bytes": saved.bytes, "tensors": saved.tensors}


class _Encoder(torch.nn.Module):
    """The model's forward_encoder as a module's forward, for torch.func.functional_call (the
    model's own forward computes the losses from transcripts)."""

    def __init__(self, asr):
        super().__init__()
        self.asr = asr

    def forward(self, features, feature_lens):
        return self.asr.forward_encoder(features, feature_lens)


def _drop_fake_caches(model) -> None:
    """Forget tensors a module cached during a fake run (the positional-encoding table): a later
    real run must not compute with fake tensors (the fused ops launch kernels on real memory)."""
    from torch._subclasses.fake_tensor import FakeTensor

    for m in model.modules():
        for name, value in list(vars(m).items()):
            if isinstance(value, FakeTensor):
                setattr(m, name, None)


@contextlib.contextmanager
def attention_reference():
    import zipformer_fast.ops.attention as attention
    saved = attention.use_triton_for
    attention.use_triton_for = lambda *t: False
    try:
        yield
    finally:
        attention.use_triton_for = saved


def main(argv=None) -> int:
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="M")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--real", action="store_true", help="run the kernels (interpreter on CPU) instead of fake tensors")
    ap.add_argument("--attention-reference", action="store_true")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="torch/Python seeds (which Balancers, Whitens, layer skips fire); one run per seed")
    ap.add_argument("--batch-counts", type=float, nargs="+", default=[None],
                    help="set_batch_count values (schedules: skip rates, Balancer probabilities); default: none set")
    a = ap.parse_args(argv)
    cfg = ZipformerConfig.preset(a.preset)
    model = AsrModel(cfg, vocab_size=cfg.vocab_size, use_transducer=True, use_ctc=True)
    T = int(round(a.seconds * 100))  # 100 fbank frames per second
    features = torch.randn(a.batch, T, 80)
    lens = torch.full((a.batch,), T, dtype=torch.long)
    ctx = attention_reference() if a.attention_reference else contextlib.nullcontext()
    sweep = []
    with ctx:
        for batch_count in a.batch_counts:
            if batch_count is not None:
                from zipformer_fast.nn import set_batch_count
                set_batch_count(model, batch_count)
            for seed in a.seeds:
                res = {b: saved_bytes(model, features, lens, b, fake=not a.real, seed=seed)
                       for b in ("reference", "triton")}
                sweep.append(dict(batch_count=batch_count, seed=seed,
                                  **{f"{k}_MiB": v["bytes"] / 2**20 for k, v in res.items()},
                                  **{f"{k}_tensors": v["tensors"] for k, v in res.items()},
                                  triton_over_reference=res["triton"]["bytes"] / res["reference"]["bytes"]))
    first = sweep[0]
    out = dict(preset=a.preset, seconds=a.seconds, batch=a.batch, frames=T, fake=not a.real,
               attention="reference" if a.attention_reference else "backend", **provenance(__file__, argv),
               **{k: v for k, v in first.items() if k not in ("batch_count", "seed")})
    if len(sweep) > 1:
        out["sweep"] = sweep
    print(f"Zipformer-{a.preset}, {a.batch} x {a.seconds:g} s, saved for backward (one training forward):")
    for row in sweep:
        if len(sweep) > 1:
            print(f" batch_count {row['batch_count']}, seed {row['seed']}:")
        for k in ("reference", "triton"):
            print(f"  {k:10s} {row[k + '_MiB']:10.1f} MiB  ({row[k + '_tensors']} tensors)")
        print(f"  triton / reference = {row['triton_over_reference']:.3f}")
    name = (f"saved_bytes_{a.preset}_{a.seconds:g}s_b{a.batch}{'_attnref' if a.attention_reference else ''}"
            f"{'_sweep' if len(sweep) > 1 else ''}.json")
    write_json(results_dir("cpu", a.out_dir) / name, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
