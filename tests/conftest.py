"""Test setup. TRITON_INTERPRET=1 must be set before any kernel module is imported, so that Triton
kernels run on CPU tensors through the interpreter (there is no GPU here). Ahead-of-time compile
tests run in a subprocess without it."""
import os
import pathlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REFERENCE_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"
REPO_REFERENCE_DIR = pathlib.Path(__file__).resolve().parent / "data"


def reference_file(name: str) -> pathlib.Path:
    for d in (REPO_REFERENCE_DIR, REFERENCE_DIR):
        if (d / name).exists():
            return d / name
    pytest.fail(f"reference file {name} not found in {REPO_REFERENCE_DIR} or {REFERENCE_DIR}")


@pytest.fixture(scope="session")
def golden():
    return torch.load(reference_file("golden_XS.pt"), weights_only=True)
