"""Every registered Triton kernel compiles ahead of time for sm_80 and sm_90 (fp32/fp16/bf16) with
the runtime's divisibility-16 specialisation, and none spills registers.

Runs tests/aot_compile.py in ONE subprocess with TRITON_INTERPRET removed from the environment
(the interpreter would replace the kernels); fails listing each kernel that did not compile or
that spills (ptxas -v: spill stores/loads > 0). The mutual-information kernels are left out here:
tests/test_mutual_information.py compiles them; bench/ptxas_report.py covers every module.

The attention kernels compile with the register cap their launcher passes (maxnreg 168, so that
two programs of 8 warps share an SM) and must not spill under it either.
"""
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_all_kernels_compile_for_sm80_and_sm90_without_spills():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "aot_compile.py"), "--arch", "80", "90",
                           "--fail-on-spill", "--skip", "mutual_information"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    out = proc.stdout + proc.stderr
    compiled = [l for l in out.splitlines() if l.startswith("ok ")]
    assert proc.returncode == 0, f"ahead-of-time compilation failed or a kernel spills:\n{out[-6000:]}"
    # Guard against a registry that silently compiled nothing: swoosh alone has 9 specs x 2 archs,
    # and every line reports the registers ptxas assigned.
    assert len(compiled) >= 18, out[-3000:]
    assert all(" regs=" in l for l in compiled), out[-3000:]
    assert all(" spills=0 " in l for l in compiled), out[-3000:]
    attention = [l for l in compiled if " attention." in l]
    assert attention and all(int(l.split(" regs=")[1].split()[0]) <= 168 for l in attention), out[-3000:]


def test_resource_usage_reads_spills_from_ptxas(tmp_path):
    """The spill check parses real ptxas output: a kernel whose one warp must hold 512 fp32 values
    per thread at once (more than the 255 registers a thread can have) is reported as spilling."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT / "tests")!r})
import aot_compile as a
import triton
import triton.language as tl

@triton.jit
def heavy(x_ptr, y_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    tl.store(y_ptr + offs, x * tl.sum(x, axis=0))  # all of x stays live across the reduction

s = a.spec(heavy, {{"BLOCK": 16384}})
c = a.compile_kernel(s.kernel, s.signature, s.constexprs, 80, num_warps=1)
light = a.resource_usage(c, 80)
print("registers", light["registers"], "spills", light["spill_stores"] + light["spill_loads"])
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    (tmp_path / "heavy.py").write_text(script)  # @triton.jit needs its source in a file
    proc = subprocess.run([sys.executable, str(tmp_path / "heavy.py")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    regs, spills = (int(v) for v in out.split("registers")[-1].split("spills"))
    assert regs > 0 and spills > 0, out
