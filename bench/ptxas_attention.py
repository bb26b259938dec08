"""Registers and spills of every fused attention kernel variant on sm_90 / sm_80, without a GPU.

Compiles each entry of kernels/attention.py's `aot_specs` (the launchers' own block sizes and
warps) with divisibility-16 specialisation of the pointers and of the strides the spec marks
(`divisible16`), as a real launch on 16-byte aligned tensors gets it, then runs the bundled ptxas
with -v on the PTX. Budget: <= 168 registers per thread and no spill stores or loads.

    python bench/ptxas_attention.py [--arch 90 80] [--json bench/results/ptxas/attention.json]

Must run without TRITON_INTERPRET (like tests/aot_compile.py).
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

REG_BUDGET = 168


def ptxas_usage(ptx: str, arch: int) -> dict:
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = pathlib.Path(d) / "k.ptx"
        src.write_text(ptx)
        res = subprocess.run([ptxas, "-lineinfo", "-v", f"--gpu-name={gpu}", str(src), "-o", str(src) + ".o"],
                             capture_output=True, text=True, check=True)
    log = res.stderr + res.stdout
    if os.environ.get("PTXAS_LOG"):
        print(log)
    regs = int(re.search(r"Used (\d+) registers", log).group(1))
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return dict(registers=regs, spill_stores=int(spill.group(1)), spill_loads=int(spill.group(2)))


def compile_spec(s, arch: int):
    import triton
    from triton.backends.compiler import GPUTarget

    fn = s.kernel
    names = list(fn.arg_names)
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in getattr(s, "divisible16", ())}
    src = triton.compiler.ASTSource(fn=fn, signature=s.signature, constexprs=s.constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": s.num_warps, "num_stages": s.num_stages,
                                   "maxnreg": getattr(s, "maxnreg", None)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[90])
    ap.add_argument("--only", default="", help="substring of the spec name")
    ap.add_argument("--json", default="")
    a = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1")
    import triton
    from aot_compile import spec
    from zipformer_fast.kernels import attention

    rows, bad = [], 0
    for s in attention.aot_specs(spec, ["fp16", "bf16"]):
        if a.only and a.only not in s.name:
            continue
        for arch in a.arch:
            t0 = time.time()
            ck = compile_spec(s, arch)
            use = ptxas_usage(ck.asm["ptx"], arch)
            ok = use["registers"] <= REG_BUDGET and use["spill_stores"] == 0 and use["spill_loads"] == 0
            bad += not ok
            cx = s.constexprs
            row = dict(kernel=s.name, arch=f"sm_{arch}", num_warps=s.num_warps,
                       BM=cx.get("BM"), BN=cx.get("BN"), BDV=cx.get("BDV"), **use,
                       within_budget=ok, compile_s=round(time.time() - t0, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        out = dict(command="python " + " ".join(["bench/ptxas_attention.py"] + (argv or sys.argv[1:])),
                   triton=triton.__version__, register_budget=REG_BUDGET,
                   note="ahead-of-time compile, divisibility-16 specialisation, ptxas -v", kernels=rows)
        pathlib.Path(a.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{bad} variant(s) over budget")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
