"""Ahead-of-time compilation of Triton kernels for real GPUs, on a machine without one.

`compile_kernel(kernel, signature, constexprs, arch)` runs triton's full pipeline (ttir -> ttgir ->
llir -> ptx -> cubin with the bundled ptxas) for sm_<arch>. It catches what the interpreter
accepts but a GPU rejects (tl.dot blocks < 16, dtype mixes in loop-carried accumulators, ...).
It must run WITHOUT TRITON_INTERPRET=1 (the interpreter replaces @triton.jit functions):
tests/test_aot_compile.py runs `python tests/aot_compile.py` in a subprocess with it removed.

Registry: SPECS maps a kernels/ module name to a function returning KernelSpecs, one per kernel
and dtype. Each file named in KERNEL_FILES that defines `aot_specs(spec, dtypes)` (next to its
kernels: it knows their typical block sizes) is registered automatically; other code may also add
entries to SPECS directly. `make_signature` builds a signature from the kernel's argument names:
`*_ptr` arguments are pointers (dtype from `ptr_dtypes`, else `default`), names in `floats` are
fp32 scalars, constexprs come from `constexprs`, everything else is i32.

CLI: python tests/aot_compile.py [--arch 80 90] [--only swoosh,bias_norm] [--jobs N] -> prints one
line per compile and exits 1 if any failed (N forked compile processes, default: all cores).
"""
import argparse
import dataclasses
import os
import sys
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
         num_stages=3, tag="") -> KernelSpec:
    fn = jit_function(kernel)
    sig = make_signature(fn, constexprs, ptr_dtypes, default, floats, i64)
    return KernelSpec(f"{fn.__name__}[{tag or default}]", fn, sig, dict(constexprs), num_warps, num_stages)


def compile_kernel(kernel, signature: Dict[str, str], constexprs: Dict[str, object], arch: int,
                   num_warps: int = 4, num_stages: int = 3):
    """Compile for sm_<arch>; returns triton's CompiledKernel (asm has ptx and cubin)."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("ahead-of-time compilation needs TRITON_INTERPRET unset")
    import triton
    from triton.backends.compiler import GPUTarget

    fn = jit_function(kernel)
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


# ------------------------------------------------------------------------------------ registry
SPECS: Dict[str, Callable[[], List[KernelSpec]]] = {}
KERNEL_FILES = ("swoosh", "bias_norm", "bypass", "downsample", "activation_linear", "attention")


def _register_optional():
    """Kernel files whose spec lists live next to them (kernels/<name>.py: aot_specs(spec))."""
    import importlib

    for name in KERNEL_FILES:
        if name in SPECS:
            continue
        try:
            mod = importlib.import_module(f"zipformer_fast.kernels.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"zipformer_fast.kernels.{name}":
                continue  # that kernels file does not exist (yet)
            raise
        if hasattr(mod, "aot_specs"):
            SPECS[name] = (lambda m=mod: m.aot_specs(spec, list(DTYPES)))


_TASKS: List[tuple] = []  # (group, KernelSpec, arch); module-level so forked workers inherit it


def _compile_task(i: int):
    group, s, arch = _TASKS[i]
    t0 = time.time()
    try:
        compiled = compile_kernel(s.kernel, s.signature, s.constexprs, arch, s.num_warps, s.num_stages)
        assert "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
        return True, f"ok   sm_{arch} {group}.{s.name} ({time.time() - t0:.1f}s)"
    except Exception:
        return False, f"FAIL sm_{arch} {group}.{s.name}:\n{traceback.format_exc(limit=3)}"


def run(archs: Sequence[int] = ARCHS, only: Optional[Sequence[str]] = None, jobs: int = 1) -> List[str]:
    """Compile every registered spec for every arch (in `jobs` forked processes); returns failures."""
    _register_optional()
    failures = []
    _TASKS.clear()
    for group, make in SPECS.items():
        if only and group not in only:
            continue
        try:
            specs = make()
        except Exception as e:  # a spec list that cannot even be built is a failure too
            failures.append(f"{group}: building specs failed: {e!r}")
            continue
        _TASKS.extend((group, s, arch) for s in specs for arch in archs)
    if jobs > 1 and len(_TASKS) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.map(_compile_task, range(len(_TASKS)), chunksize=1)
    else:
        results = [_compile_task(i) for i in range(len(_TASKS))]
    for ok, msg in results:
        print(msg, flush=True)
        if not ok:
            failures.append(msg)
    return failures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=list(ARCHS))
    p.add_argument("--only", default="", help="comma-separated SPECS groups")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    a = p.parse_args(argv)
    failures = run(a.arch, [g for g in a.only.split(",") if g] or None, a.jobs)
    print(f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
