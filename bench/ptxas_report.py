"""Registers and spills of every Triton kernel, compiled ahead of time for sm_80 and sm_90.

Compiles every kernel of every kernels/*.py module that lists its compile cases in
`aot_specs(spec, dtypes)` (discovered, not listed here: tests/aot_compile.py), with the
divisibility-16 specialisation the GPU runtime applies to pointer and integer arguments, and
reads `ptxas -v` (bundled with triton) for each: registers per thread, spill stores/loads, stack
frame, Triton's shared memory. No GPU needed; TRITON_INTERPRET is removed from this process.

    python bench/ptxas_report.py [--arch 80 90] [--jobs N] [--only swoosh,bias_norm]
                                 [--out-dir bench/results/ptxas]

Writes <out-dir>/report.json (one row per kernel x arch, plus versions and the command) and
<out-dir>/report.md (a table). Exits 1 if a kernel failed to compile or spills.
tests/test_aot_compile.py runs the same compile-and-check on CI with --fail-on-spill.
"""
import argparse
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as `python bench/ptxas_report.py`: import bench.* from the repo root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

os.environ.pop("TRITON_INTERPRET", None)  # before triton (or a kernels module) is imported

from bench.harness import RESULTS, ROOT, add_out_dir_argument, provenance, write_json  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
import aot_compile  # noqa: E402  (tests/aot_compile.py: the compile cases CI checks too)


def markdown(rows) -> str:
    lines = ["| kernel | arch | warps | registers | spill st/ld (B) | stack (B) | shared (B) |",
             "|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["group"], r["kernel"], r["arch"])):
        if "registers" not in r:
            lines.append(f"| {r['group']}.{r['kernel']} | {r['arch']} | {r['num_warps']} | FAILED | | | |")
            continue
        lines.append(f"| {r['group']}.{r['kernel']} | {r['arch']} | {r['num_warps']} | {r['registers']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=list(aot_compile.ARCHS))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="")
    add_out_dir_argument(ap, default_help="bench/results/ptxas")
    a = ap.parse_args(argv)
    rows: list = []
    failures = aot_compile.run(a.arch, [g for g in a.only.split(",") if g] or None, a.jobs, rows=rows,
                               fail_on_spill=True)
    ok = [r for r in rows if "registers" in r]
    spilling = [r for r in ok if r["spill_stores"] + r["spill_loads"] > 0]
    doc = {"kernels": len(rows), "compiled": len(ok), "spilling": len(spilling),
           "max_registers": max((r["registers"] for r in ok), default=0),
           "specialisation": "tt.divisibility=16 on pointer and integer arguments (tests/aot_compile.py)",
           **provenance(__file__, argv, "cpu"), "rows": rows}
    out = pathlib.Path(a.out_dir) if a.out_dir else RESULTS / "ptxas"
    write_json(out / "report.json", doc)
    header = (f"# ptxas report\n\n{len(ok)} of {len(rows)} compiles succeeded, {len(spilling)} spill; "
              f"triton {doc['triton']}; `{doc['command']}` at {doc['git_commit']}. Divisibility-16 "
              f"specialisation on pointer/integer arguments.\n\n")
    (out / "report.md").write_text(header + markdown(rows))
    print(f"{len(ok)}/{len(rows)} compiled, {len(spilling)} spilling, {len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
