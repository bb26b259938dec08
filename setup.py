"""Install zipformer_fast: the Python package, kernels/ as zipformer_fast.kernels, and csrc/ (the
compiled ScaledAdam step's C++/CUDA sources) as zipformer_fast/csrc so that an installed package can
build the step on first use.

With build isolation (`pip install .`, the default) torch is not importable here, so the package
installs as pure Python and the optimizer compiles its step on first use
(zipformer_fast/optim/extension.py). With `--no-build-isolation` and torch importable, the step is
prebuilt here: a CPU library wherever a compiler exists and a CUDA library where torch has CUDA and
a toolkit is found (TORCH_CUDA_ARCH_LIST picks the GPUs, e.g. "8.0;9.0"; CUDA 13 dropped sm_70).
A failed compile only warns: the first-use build or the torch._foreach path remains.
ZIPFORMER_FAST_NO_EXTENSION=1 skips it.
"""
import os
import warnings

from setuptools import find_packages, setup

CSRC = "csrc"


def optimizer_extensions():
    """(ext_modules, cmdclass) for the compiled ScaledAdam step; empty when torch is not importable."""
    if os.environ.get("ZIPFORMER_FAST_NO_EXTENSION", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return [], {}

    class OptionalBuildExt(BuildExtension):
        """A compile failure must not fail `pip install`: the first-use build / foreach path remains."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # compiler missing, toolkit mismatch...
                warnings.warn(f"zipformer_fast: not prebuilding {ext.name} ({e}); the optimizer "
                              "will build it on first use or use its torch._foreach path")

    exts = [CppExtension("zipformer_fast.optim._scaled_adam_cpu", [f"{CSRC}/scaled_adam_cpu.cpp"],
                         extra_compile_args={"cxx": ["-O3", "-fopenmp"]}, extra_link_args=["-fopenmp"])]
    if torch.version.cuda and CUDA_HOME is not None:
        exts.append(CUDAExtension(
            "zipformer_fast.optim._scaled_adam_cuda",
            [f"{CSRC}/scaled_adam_cuda.cpp", f"{CSRC}/scaled_adam_kernels.cu"],
            include_dirs=[os.path.abspath(CSRC)],
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]}))
    return exts, {"build_ext": OptionalBuildExt}


ext_modules, cmdclass = optimizer_extensions()

setup(
    name="zipformer_fast",
    version="0.1.0",
    description="Zipformer ASR encoder with fused Triton kernels and a multi-tensor ScaledAdam",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["zipformer_fast", "zipformer_fast.*"])
    + ["zipformer_fast.kernels", "zipformer_fast.csrc"],
    package_dir={"zipformer_fast.kernels": "kernels", "zipformer_fast.csrc": CSRC},
    package_data={"zipformer_fast.csrc": ["*.h", "*.cpp", "*.cu"]},
    # torch is deliberately not pinned to a build: users bring their own (CPU or CUDA) torch >= 2.4.
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "triton": ["triton>=3.0"],
        "data": ["lhotse", "sentencepiece", "soundfile", "urllib3"],
        # ONNX export (torch.onnx's TorchScript exporter, as icefall) and sherpa-onnx deployment.
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "sherpa-onnx==2.0.1", "sentencepiece", "soundfile"],
        "dev": [
            "pytest", "pytest-benchmark", "ninja", "matplotlib", "tqdm", "tensorboard",
            "lhotse", "sentencepiece", "soundfile", "urllib3",
            "onnx>=1.15", "onnxruntime>=1.17", "sherpa-onnx==2.0.1", "kaldi-native-fbank",
            "triton==3.6.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "numpy<2.4",  # triton 3.6's interpreter needs numpy < 2.4
        ],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
