"""Ahead-of-time compilation of Triton kernels for real GPUs, on a machine without one.

`compile_kernel(kernel, signature, constexprs, arch)` runs triton's full pipeline (ttir -> ttgir ->
llir -> ptx -> cubin with the bundled ptxas) for sm_<arch>. It catches what the interpreter
accepts but a GPU rejects (tl.dot blocks < 16, dtype mixes in loop-carried accumulators, ...).
It must run WITHOUT TRITON_INTERPRET=1 (the interpreter replaces @triton.jit functions):
tests/test_aot_compile.py runs `python tests/aot_compile.py` in a subprocess with it removed.

Registry: SPECS maps a kernels/ module name to a function returning KernelSpecs, one per kernel
and dtype. Every module of zipformer_fast.kernels that defines `aot_specs(spec, dtypes)` (next to
its kernels: it knows their launch configs) is discovered and registered automatically; other
code may also add entries to SPECS directly.

Specialisation: by default pointer and i32 arguments are compiled with the divisibility-16
attribute the GPU runtime gives them when the address / value is a multiple of 16 (tensors from
torch's allocator, Zipformer's channel counts), i.e. the variant that runs in practice, with
vectorised loads; a spec lists `not_divisible` argument names for values that rarely are.
--no-divisibility compiles the generic variant instead.

Resource usage: `resource_usage(compiled, arch)` runs the bundled ptxas -v on the PTX and returns
registers, spill stores/loads (bytes), stack and shared memory; --fail-on-spill makes any spill a
failure (tests/test_aot_compile.py), --json writes every kernel's figures (bench/ptxas_report.py). `make_signature` builds a signature from the kernel's argument names:
`*_ptr` arguments are pointers (dtype from `ptr_dtypes`, else `default`), names in `floats` are
fp32 scalars, constexprs come from `constexprs`, everything else is i32.

CLI: python tests/aot_compile.py [--arch 80 90] [--only swoosh,bias_norm] [--skip m1,m2] [--jobs N]
        [--fail-on-spill [--allow-spill attention]] [--json PATH] [--no-divisibility]
prints one line per compile (with registers and spills) and exits 1 if any failed (N forked
compile processes, default: all cores).
"""
import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Callable, Dict, List, Optional, Sequence

ARCHS = (80, 90)
DTYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16"}


@dataclasses.dataclass
class KernelSpec:
    name: str                 # e.g. "bias_norm_fwd_kernel[fp16]"
    kernel: object            # @triton.jit function (autotune/heuristics wrappers are unwrapped)
    signature: Dict[str, str]
    constexprs: Dict[str, object]
    num_warps: int = 4
    num_stages: int = 3
    not_divisible: Sequence[str] = ()  # int/pointer args never given the divisibility-16 attribute
    # When set, ONLY these args get the divisibility-16 attribute (a kernel whose launcher knows
    # which strides are multiples of 16, e.g. attention's padded mask rows).
    divisible16: Optional[Sequence[str]] = None
    maxnreg: Optional[int] = None      # the register cap the launcher passes (Triton's maxnreg option)
    archs: Optional[Sequence[int]] = None  # compiled only for these (a variant the launcher uses on them only)


def jit_function(kernel):
    """The JITFunction under @triton.autotune / @triton.heuristics wrappers."""
    from triton.runtime.jit import JITFunction

    while not isinstance(kernel, JITFunction):
        kernel = kernel.fn
    return kernel


def make_signature(kernel, constexprs: Dict[str, object], ptr_dtypes: Optional[Dict[str, str]] = None,
                   default: str = "fp32", floats: Sequence[str] = (), i64: Sequence[str] = ()) -> Dict[str, str]:
    fn = jit_function(kernel)
    ptr_dtypes = ptr_dtypes or {}
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*" + ptr_dtypes.get(name, default)
        elif name in floats:
            sig[name] = "fp32"
        elif name in i64:
            sig[name] = "i64"
        else:
            sig[name] = "i32"
    return sig


def spec(kernel, constexprs, ptr_dtypes=None, default="fp32", floats=(), i64=(), num_warps=4,
         num_stages=3, tag="", not_divisible=()) -> KernelSpec:
    fn = jit_function(kernel)
    sig = make_signature(fn, constexprs, ptr_dtypes, default, floats, i64)
    return KernelSpec(f"{fn.__name__}[{tag or default}]", fn, sig, dict(constexprs), num_warps, num_stages,
                      tuple(not_divisible))


def divisibility_attrs(kernel, signature: Dict[str, str], not_divisible: Sequence[str] = ()) -> dict:
    """The tt.divisibility=16 attribute on every pointer and i32/i64 argument (as the runtime
    specialises arguments whose value is a multiple of 16), except those in not_divisible."""
    fn = jit_function(kernel)
    return {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
            if name not in not_divisible and (signature[name].startswith("*") or signature[name] in ("i32", "i64"))}


def compile_kernel(kernel, signature: Dict[str, str], constexprs: Dict[str, object], arch: int,
                   num_warps: int = 4, num_stages: int = 3, attrs: Optional[dict] = None,
                   maxnreg: Optional[int] = None):
    """Compile for sm_<arch>; returns triton's CompiledKernel (asm has ptx and cubin)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")
    import triton
    from triton.backends.compiler import GPUTarget

    fn = jit_function(kernel)
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages, "maxnreg": maxnreg})


def resource_usage(compiled, arch: int) -> Dict[str, int]:
    """registers, spill_stores, spill_loads (bytes), stack (bytes) and shared (bytes, Triton's
    static allocation) of a compiled kernel, from the bundled `ptxas -v` on its PTX."""
    from triton.backends.nvidia.compiler import get_ptxas

    ptxas = get_ptxas(arch).path
    gpu = f"sm_{arch}a" if arch >= 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(compiled.asm["ptx"])
        log = subprocess.run([ptxas, "-v", f"--gpu-name={gpu}", src, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr

    def grab(pattern):
        m = re.search(pattern, log)
        if m is None:
            raise RuntimeError(f"ptxas -v output not understood:\n{log}")
        return int(m.group(1))

    return {"registers": grab(r"Used (\d+) registers"), "spill_stores": grab(r"(\d+) bytes spill stores"),
            "spill_loads": grab(r"(\d+) bytes spill loads"), "stack": grab(r"(\d+) bytes stack frame"),
            "shared": int(getattr(compiled.metadata, "shared", 0))}


# ------------------------------------------------------------------------------------ registry
SPECS: Dict[str, Callable[[], List[KernelSpec]]] = {}


def kernel_modules() -> List[str]:
    """Names of the modules of zipformer_fast.kernels (each kernels/*.py file)."""
    import pkgutil

    import zipformer_fast.kernels as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__))


def _register_optional():
    """Every kernels/<name>.py that defines aot_specs(spec, dtypes) (its spec list lives next to
    its kernels), discovered, not listed: a new kernel file is compiled without editing this."""
    import importlib

    for name in kernel_modules():
        if name in SPECS:
            continue
        mod = importlib.import_module(f"zipformer_fast.kernels.{name}")
        if hasattr(mod, "aot_specs"):
            SPECS[name] = (lambda m=mod: m.aot_specs(spec, list(DTYPES)))


_TASKS: List[tuple] = []  # (group, KernelSpec, arch); module-level so forked workers inherit it
_DIVISIBILITY = [True]


def _compile_task(i: int):
    group, s, arch = _TASKS[i]
    t0 = time.time()
    row = {"group": group, "kernel": s.name, "arch": f"sm_{arch}", "num_warps": s.num_warps,
           "divisibility_16": _DIVISIBILITY[0]}
    try:
        attrs = None
        if _DIVISIBILITY[0] and s.divisible16 is not None:
            names = list(jit_function(s.kernel).arg_names)
            attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in s.divisible16}
        elif _DIVISIBILITY[0]:
            attrs = divisibility_attrs(s.kernel, s.signature, s.not_divisible)
        compiled = compile_kernel(s.kernel, s.signature, s.constexprs, arch, s.num_warps, s.num_stages, attrs,
                                  s.maxnreg)
        assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
        row.update(resource_usage(compiled, arch))
        spills = row["spill_stores"] + row["spill_loads"]
        return True, row, (f"ok   sm_{arch} {group}.{s.name} regs={row['registers']} spills={spills} "
                           f"({time.time() - t0:.1f}s)")
    except Exception:
        return False, row, f"FAIL sm_{arch} {group}.{s.name}:\n{traceback.format_exc(limit=3)}"


def run(archs: Sequence[int] = ARCHS, only: Optional[Sequence[str]] = None, jobs: int = 1,
        skip: Sequence[str] = (), fail_on_spill: bool = False, rows: Optional[list] = None,
        divisibility: bool = True, allow_spill: Sequence[str] = ()) -> List[str]:
    """Compile every registered spec for every arch (in `jobs` forked processes); returns failures
    (and appends one resource-usage dict per compile to `rows`). With fail_on_spill, a spill is a
    failure except in the groups named in allow_spill (still printed)."""
    _register_optional()
    failures = []
    _TASKS.clear()
    _DIVISIBILITY[0] = divisibility
    for group, make in SPECS.items():
        if (only and group not in only) or group in skip:
            continue
        try:
            specs = make()
        except Exception as e:  # a spec list that cannot even be built is a failure too
            failures.append(f"{group}: building specs failed: {e!r}")
            continue
        _TASKS.extend((group, s, arch) for s in specs for arch in archs if s.archs is None or arch in s.archs)
    if jobs > 1 and len(_TASKS) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_task, range(len(_TASKS)), chunksize=1)
    else:
        results = [_compile_task(i) for i in range(len(_TASKS))]
    for ok, row, msg in results:
        print(msg, flush=True)
        if rows is not None:
            rows.append(row)
        if not ok:
            failures.append(msg)
        elif fail_on_spill and row["spill_stores"] + row["spill_loads"] > 0:
            msg = (f"SPILL {row['arch']} {row['group']}.{row['kernel']}: {row['spill_stores']} bytes stored, "
                   f"{row['spill_loads']} bytes loaded ({row['registers']} registers)")
            print(msg + (" (allowed)" if row["group"] in allow_spill else ""), flush=True)
            if row["group"] not in allow_spill:
                failures.append(msg)
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--only", default="", help="comma-separated SPECS groups")
    p.add_argument("--skip", default="", help="comma-separated SPECS groups to leave out")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    p.add_argument("--fail-on-spill", action="store_true", help="a kernel that spills registers is a failure")
    p.add_argument("--allow-spill", default="", help="with --fail-on-spill: comma-separated groups whose spills "
                   "are reported but not failures")
    p.add_argument("--no-divisibility", action="store_true", help="compile the generic (unspecialised) variants")
    p.add_argument("--json", default="", help="write every compile's resource usage here")
    a = p.parse_args(argv)
    rows: list = []
    failures = run(a.arch, [g for g in a.only.split(",") if g] or None, a.jobs, [g for g in a.skip.split(",") if g],
                   a.fail_on_spill, rows, not a.no_divisibility, [g for g in a.allow_spill.split(",") if g])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
