"""Install zipformer_fast. `kernels/` is installed as `zipformer_fast.kernels`.

Nothing here needs torch in an isolated build environment: with build isolation (`pip install .`)
the package installs as pure Python and the optimizer extension compiles on first use
(torch.utils.cpp_extension.load, cached). With `--no-build-isolation` and torch importable, the
extension is prebuilt here (see csrc/build.py).
"""
import os

from setuptools import find_packages, setup

ext_modules, cmdclass = [], {}
if os.environ.get("ZIPFORMER_FAST_NO_EXTENSION", "0") != "1":
    try:  # torch visible only without build isolation
        import torch  # noqa: F401
        import sys
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc"))
        from build import setup_extensions  # csrc/build.py, written with the optimizer
        ext_modules, cmdclass = setup_extensions()
    except ImportError:
        pass

setup(
    name="zipformer_fast",
    version="0.1.0",
    description="Zipformer ASR encoder with fused Triton kernels and a multi-tensor ScaledAdam",
    license="Apache-2.0",
    python_requires=">=3.9",
    # Every zipformer_fast subpackage, plus kernels/ installed as zipformer_fast.kernels.
    packages=find_packages(include=["zipformer_fast", "zipformer_fast.*"]) + ["zipformer_fast.kernels"],
    package_dir={"zipformer_fast.kernels": "kernels"},
    package_data={"zipformer_fast.optim": ["csrc/*"]},
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
