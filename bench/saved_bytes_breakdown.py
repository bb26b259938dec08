"""Who saves what for backward: a per-site breakdown of bench/saved_bytes.py's count.

Same counting rule (each storage once, parameters and the input excluded, fake tensors by
default). Each storage is attributed to the first place that saved it: the innermost
zipformer_fast source line on the Python stack when the pack hook ran (an op's setup_context, an
autograd.Function's forward, or the module line whose torch op saved it), and the module class
running at that moment. Sites are summed over all layers; the top rows are printed per backend.

    TRITON_INTERPRET=1 python bench/saved_bytes_breakdown.py [--preset M] [--seconds 30] [--batch 1]
                                                             [--attention-mode auto] [--top 40]
                                                             [--list MODULE_PATH] [--out-dir DIR]
writes every row (not only --top) to <out-dir>/saved_bytes_breakdown_<preset>_<seconds>s[_<mode>].json
(default bench/results/cpu/).
A second table groups the storages by the set of module classes that saved them: a storage that
only a Balancer or Whiten saved costs memory because of that module alone; one that a Balancer and
the next op both saved does not.
"""
import argparse
import collections
import pathlib
import sys
import traceback

if __package__ in (None, ""):  # run as `python bench/saved_bytes_breakdown.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import torch  # noqa: E402

from bench.harness import ROOT, add_out_dir_argument, provenance, results_dir, write_json  # noqa: E402
from bench.saved_bytes import saved_bytes  # noqa: E402
from zipformer_fast.runtime import ATTENTION_MODES, configure  # noqa: E402

PKG = str(ROOT / "zipformer_fast")


def _site() -> str:
    for fr in reversed(traceback.extract_stack()):
        if fr.filename.startswith(PKG):
            rel = fr.filename[len(str(ROOT)) + 1:]
            return f"{rel}:{fr.lineno} {fr.name}"
    return "?"


def breakdown(model, features, lens, backend: str, fake: bool = True, seed: int = 0, listing: str = ""):
    """(total bytes, {(module class, site, dtype): [bytes, count, example shape]},
    {sorted module classes that saved one storage: [bytes, count]}). With `listing`, also prints
    every storage saved under that module path prefix with all of its savers."""
    model.train()
    stack = []
    hooks = []
    for name, m in model.named_modules():
        hooks.append(m.register_forward_pre_hook(lambda mod, args, n=name: stack.append((type(mod).__name__, n))))
        hooks.append(m.register_forward_hook(lambda mod, args, out: stack.pop() and None))
    seen = {}

    def observe(t, k):
        mod, path = stack[-1] if stack else ("-", "-")
        site = _site()
        if k not in seen:
            seen[k] = (t.untyped_storage().nbytes(), mod, site, t.dtype, tuple(t.shape), set(), [])
        seen[k][5].add(mod)
        seen[k][6].append(f"{path}@{site.split()[0].rsplit('/', 1)[-1]}")

    try:
        total = saved_bytes(model, features, lens, backend, fake=fake, seed=seed, observe=observe)["bytes"]
    finally:
        for h in hooks:
            h.remove()
    if listing:
        for nb, mod, site, dtype, shape, savers, paths in seen.values():
            if any(p.startswith(listing) for p in paths):
                print(f"{nb / 2**20:7.2f} MiB {str(dtype)[6:]:8} {str(list(shape)):22} {', '.join(paths)}")
    rows = collections.OrderedDict()
    sharing = collections.OrderedDict()
    for nb, mod, site, dtype, shape, savers, paths in seen.values():
        key = (mod, site, str(dtype).replace("torch.", ""))
        r = rows.setdefault(key, [0, 0, shape])
        r[0] += nb
        r[1] += 1
        r = sharing.setdefault(" + ".join(sorted(savers)), [0, 0])
        r[0] += nb
        r[1] += 1
    return total, rows, sharing


def main(argv=None) -> int:
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="M")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--attention-mode", default="auto", choices=ATTENTION_MODES)
    ap.add_argument("--backends", nargs="+", default=["reference", "triton"])
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--list", default="", metavar="MODULE_PATH",
                    help="also list every storage saved under this module path prefix, with all its savers")
    add_out_dir_argument(ap, default_help="bench/results/cpu")
    a = ap.parse_args(argv)
    cfg = ZipformerConfig.preset(a.preset)
    model = AsrModel(cfg, vocab_size=cfg.vocab_size, use_transducer=True, use_ctc=True)
    T = int(round(a.seconds * 100))
    features = torch.randn(a.batch, T, 80)
    lens = torch.full((a.batch,), T, dtype=torch.long)
    totals = {}
    report = dict(preset=a.preset, seconds=a.seconds, batch=a.batch, attention_mode=a.attention_mode,
                  fake=True, **provenance(__file__, argv), backends={})
    with configure(attention_mode=a.attention_mode):
        for backend in a.backends:
            total, rows, sharing = breakdown(model, features, lens, backend, listing=a.list)
            totals[backend] = total
            report["backends"][backend] = dict(
                MiB=total / 2**20,
                by_site=[dict(MiB=nb / 2**20, storages=n, dtype=dt, module=mod, site=site, example_shape=list(shape))
                         for (mod, site, dt), (nb, n, shape) in sorted(rows.items(), key=lambda kv: -kv[1][0])],
                by_savers=[dict(MiB=nb / 2**20, storages=n, savers=key)
                           for key, (nb, n) in sorted(sharing.items(), key=lambda kv: -kv[1][0])])
            print(f"\n== {backend} (attention {a.attention_mode}): {total / 2**20:.1f} MiB, "
                  f"{sum(r[1] for r in rows.values())} storages")
            print(f"{'MiB':>8} {'%':>5} {'n':>4}  {'dtype':8} {'module':28} site  [example shape]")
            for (mod, site, dt), (nb, n, shape) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:a.top]:
                print(f"{nb / 2**20:8.1f} {100 * nb / total:5.1f} {n:4d}  {dt:8} {mod:28} {site}  {list(shape)}")
            print("-- by the set of module classes that saved each storage:")
            for key, (nb, n) in sorted(sharing.items(), key=lambda kv: -kv[1][0])[:a.top]:
                print(f"{nb / 2**20:8.1f} {100 * nb / total:5.1f} {n:4d}  {key}")
    if "reference" in totals and "triton" in totals:
        report["triton_over_reference"] = totals["triton"] / totals["reference"]
        print(f"\ntriton / reference = {report['triton_over_reference']:.3f}")
    mode = "" if a.attention_mode == "auto" else f"_{a.attention_mode}"
    write_json(results_dir("cpu", a.out_dir) / f"saved_bytes_breakdown_{a.preset}_{a.seconds:g}s{mode}.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
