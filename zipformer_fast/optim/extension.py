"""Loading and calling the compiled multi-tensor ScaledAdam step (sources in the repository's csrc/).

Where the extension comes from, in order:
  1. a prebuilt library `zipformer_fast/optim/_scaled_adam_cpu*.so` / `_scaled_adam_cuda*.so`,
     made by setup.py when torch was importable at build time (--no-build-isolation);
  2. otherwise a first-use build with torch.utils.cpp_extension.load (ninja) from the csrc/
     sources: `zipformer_fast/csrc/` in an installed package (setup.py ships them there), the
     repository's `csrc/` in a source tree or an editable install. The build is cached per user in
     torch's extension dir (~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR): ~40 s once.
ZIPFORMER_FAST_NO_EXTENSION=1 disables both. The libraries register torch ops (torch.ops.zf_sa_cpu / zf_sa_cuda) instead of a pybind module:
that keeps the build to ~15 s of compiler time instead of ~60 s. The CUDA library is only tried where
torch.version.cuda is set (a CPU torch has no usable CUDA headers); the toolchain must support
the GPU (CUDA 13 dropped sm_70: V100 users get the foreach path).
"""
from __future__ import annotations

import functools
import importlib.util
import os
import types
import pathlib
from typing import Optional, Tuple

import torch

from ..runtime import extension_disabled, verbose_build
from .clipping import clipping_factor
from .reference import is_scalar


def _find_sources() -> pathlib.Path:
    package = pathlib.Path(__file__).resolve().parents[1]
    for candidate in (package / "csrc", package.parent / "csrc"):  # installed, then source tree
        if (candidate / "scaled_adam_math.h").is_file():
            return candidate
    return package / "csrc"  # absent: load_extension reports the missing file


CSRC = _find_sources()
CPU_SOURCES = ("scaled_adam_cpu.cpp",)
CUDA_SOURCES = ("scaled_adam_cuda.cpp", "scaled_adam_kernels.cu")
CXX_FLAGS = ["-O3", "-fopenmp"]
NVCC_FLAGS = ["-O3"]


LIBS = {"cpu": ("zf_sa_cpu", "_scaled_adam_cpu", "zipformer_fast_scaled_adam_cpu"),
        "cuda": ("zf_sa_cuda", "_scaled_adam_cuda", "zipformer_fast_scaled_adam_cuda")}


def _ops(namespace: str):
    ns = getattr(torch.ops, namespace)
    return types.SimpleNamespace(reduce=ns.reduce, apply=ns.apply, namespace=namespace)


def _prebuilt_path(module: str) -> Optional[str]:
    # setup.py builds the library as zipformer_fast/optim/<module>*.so; it registers torch ops
    # (TORCH_LIBRARY), it is not a Python module, so it is found, not imported.
    spec = importlib.util.find_spec(f"{__package__}.{module}")
    if spec is None or not spec.origin:
        return None
    built = os.path.getmtime(spec.origin)
    sources = [f for f in CSRC.glob("*") if f.suffix in (".h", ".cpp", ".cu")]
    if any(os.path.getmtime(f) > built for f in sources):
        return None  # sources edited since the prebuild: let the first-use build pick them up
    return spec.origin


@functools.lru_cache(maxsize=None)
def load_extension(device_type: str) -> Tuple[Optional[object], str]:
    """(ops, "") with ops.reduce / ops.apply, or (None, reason). Cached per process."""
    if extension_disabled():
        return None, "ZIPFORMER_FAST_NO_EXTENSION=1"
    if device_type not in LIBS:
        return None, f"no extension for device type {device_type!r}"
    if device_type == "cuda" and not torch.version.cuda:
        return None, "this torch build has no CUDA"
    namespace, module, jit_name = LIBS[device_type]
    if hasattr(torch.ops, namespace) and hasattr(getattr(torch.ops, namespace), "apply"):
        return _ops(namespace), ""  # already registered in this process
    try:
        path = _prebuilt_path(module)
        if path is not None:
            torch.ops.load_library(path)
            return _ops(namespace), ""
    except Exception:  # stale or foreign build: fall through to the first-use build
        pass
    try:
        from torch.utils.cpp_extension import load
        verbose = verbose_build()
        if device_type == "cpu":
            load(name=jit_name, sources=[str(CSRC / s) for s in CPU_SOURCES],
                 extra_cflags=CXX_FLAGS, extra_ldflags=["-fopenmp"], is_python_module=False,
                 verbose=verbose)
        else:
            load(name=jit_name, sources=[str(CSRC / s) for s in CUDA_SOURCES],
                 extra_cflags=["-O3"], extra_cuda_cflags=NVCC_FLAGS,
                 extra_include_paths=[str(CSRC)], is_python_module=False, verbose=verbose)
        return _ops(namespace), ""
    except Exception as e:  # no compiler, no ninja, no CUDA toolkit...
        msg = str(e).strip().splitlines()
        return None, f"{type(e).__name__}: {msg[-1] if msg else ''}"


def extension_supports(params) -> Optional[str]:
    """None when the extension can take this group, else why not."""
    dev = params[0].device
    for p in params:
        if p.device != dev:
            return "parameters of one group are on different devices"
        if p.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            return f"dtype {p.dtype} (the extension takes float32/float16/bfloat16)"
        if not p.is_contiguous():
            return "a non-contiguous parameter"
    return None


_DUMMY = {}


def _dummy(device, period):
    key = (str(device), period)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(period, dtype=torch.float32, device=device)
    return _DUMMY[key]


@torch.no_grad()
def extension_group_step(ext, group: dict, params, grads, states, clip_state: dict,
                         first_step: bool):
    """One group step: reduce (1 pass over p, g), clipping factor on the device, apply (1 pass)."""
    t = states[0]["step"]
    period = group["size_update_period"]
    dev = params[0].device
    dummy = _dummy(dev, period)
    grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
    scalar = [is_scalar(p) for p in params]
    rms = [dummy if s else st["param_rms"] for s, st in zip(scalar, states)]
    sums, tot = ext.reduce(params, grads, rms, float(group["scalar_lr_scale"]))
    gamma = clipping_factor(group, clip_state, tot, t, first_step)
    if gamma is None:
        gamma = torch.ones((), dtype=torch.float32, device=dev)
    beta1, beta2 = group["betas"]
    ext.apply(params, grads,
              [st["exp_avg_sq"] for st in states], [st["delta"] for st in states], rms,
              [dummy if s else st["scale_grads"] for s, st in zip(scalar, states)],
              [dummy if s else st["scale_exp_avg_sq"] for s, st in zip(scalar, states)],
              sums, gamma.to(torch.float32), float(group["lr"]), float(beta1), float(beta2),
              float(group["eps"]), float(group["scalar_lr_scale"]), float(group["param_min_rms"]),
              float(group["param_max_rms"]), float(group["scalar_max"]), int(t), int(period))
    for st in states:
        st["step"] = t + 1
