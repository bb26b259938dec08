"""Build-time hook for setup.py: the optimizer's compiled ScaledAdam step.

setup.py calls `setup_extensions()` only when torch is importable at build time (install with
`pip install --no-build-isolation .`); it returns (ext_modules, cmdclass):
  - zipformer_fast.optim._scaled_adam_cpu: CppExtension, -O3 -fopenmp, wherever a compiler exists;
  - zipformer_fast.optim._scaled_adam_cuda: CUDAExtension, only where torch.version.cuda is set
    and a CUDA toolkit is found (set TORCH_CUDA_ARCH_LIST, e.g. "8.0;9.0"; sm_75 is the oldest
    CUDA 13 supports, so a V100/sm_70 needs a CUDA 12 toolkit or uses the foreach fallback).
A failed compile only warns: the package still installs, and the optimizer then builds the
library on first use (torch.utils.cpp_extension.load) or falls back to torch._foreach.

The sources live in zipformer_fast/optim/csrc/ (not here) because they must ship inside the
package (setup.py package_data) for that first-use build to work from an installed wheel, with
or without build isolation. This directory holds only the build glue.
"""
import os
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join("zipformer_fast", "optim", "csrc")  # relative to setup.py, as setuptools wants


def setup_extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    class OptionalBuildExt(BuildExtension):
        """A compile failure must not fail `pip install`: the JIT build/foreach path remains."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # compiler missing, toolkit mismatch...
                warnings.warn(f"zipformer_fast: not prebuilding {ext.name} ({e}); the optimizer "
                              "will build it on first use or use its torch._foreach path")

    exts = [CppExtension(
        "zipformer_fast.optim._scaled_adam_cpu",
        [os.path.join(SRC, "scaled_adam_cpu.cpp")],
        extra_compile_args={"cxx": ["-O3", "-fopenmp"]},
        extra_link_args=["-fopenmp"],
    )]
    if torch.version.cuda and CUDA_HOME is not None:
        exts.append(CUDAExtension(
            "zipformer_fast.optim._scaled_adam_cuda",
            [os.path.join(SRC, "scaled_adam_cuda.cpp"), os.path.join(SRC, "scaled_adam_kernels.cu")],
            include_dirs=[os.path.join(ROOT, SRC)],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
        ))
    return exts, {"build_ext": OptionalBuildExt}
