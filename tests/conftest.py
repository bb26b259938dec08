"""Test setup. TRITON_INTERPRET=1 must be set before any kernel module is imported, so that Triton
kernels run on CPU tensors through the interpreter (there is no GPU here). Ahead-of-time compile
tests run in a subprocess without it.

Markers (registered in pyproject.toml): `gpu` tests need a CUDA device and are skipped without one
(`pytest -m gpu` selects them on a GPU machine); `slow` tests take CPU-minutes and run only when
the marker expression asks for them (`pytest -m slow`, `pytest -m "gpu or slow"`)."""
import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"


def reference_file(name: str) -> pathlib.Path:
    """A file of tests/data: icefall's reference runs (golden_XS*.pt) and state-dict layouts."""
    path = DATA_DIR / name
    if not path.exists():
        pytest.fail(f"reference file {name} not found in {DATA_DIR}")
    return path


def pytest_collection_modifyitems(config, items):
    wants_slow = "slow" in (config.getoption("markexpr") or "")
    no_gpu = pytest.mark.skip(reason="needs a CUDA device")
    not_asked = pytest.mark.skip(reason="slow: CPU-minutes; select with -m slow")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "slow" in item.keywords and not wants_slow:
            item.add_marker(not_asked)


@pytest.fixture(scope="session")
def golden():
    return torch.load(reference_file("golden_XS.pt"), weights_only=True)
