"""ScaledAdam's CUDA extension against the per-parameter reference on the GPU (fp32: 2e-6 of each
tensor's max-abs after 50 steps with GradScaler, an injected inf and clipping; bf16/fp16: 2 ulp
after 12 steps), and against the CPU extension. Skipped where there is no CUDA device; the
GPU-less CI still compiles the kernels (test_optim_nvcc.py)."""
import logging

import pytest
import torch

from test_optim_equivalence import REL_TOL, TinyNet, make_optimizer, max_rel_err, train
from zipformer_fast.optim.extension import load_extension

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def ext_cuda():
    ext, why = load_extension("cuda")
    assert ext is not None, f"CUDA extension failed to build/load on a CUDA machine: {why}"
    return ext


def _quiet(fn, *a, **k):
    logging.disable(logging.WARNING)
    try:
        return fn(*a, **k)
    finally:
        logging.disable(logging.NOTSET)


def test_cuda_extension_matches_reference(ext_cuda):
    ref = _quiet(train, "reference", device="cuda")
    ext = _quiet(train, "extension", device="cuda")
    assert max_rel_err(ext[0].state_dict(), ref[0].state_dict()) < REL_TOL
    first = ext[1].state[ext[1].param_groups[0]["params"][0]]
    assert first["step"] == 49 and "model_norm_threshold" in first
    assert ext[1].state[ext[0].lin.weight]["exp_avg_sq"].is_cuda


def test_cuda_matches_cpu_extension(ext_cuda):
    """Same gradients fed to both devices (a model's own CPU/GPU gradients differ by TF32 convs),
    40 steps so clipping and 10 size updates run."""
    torch.manual_seed(0)
    cpu_model = TinyNet()
    gpu_model = TinyNet()
    gpu_model.load_state_dict(cpu_model.state_dict())
    gpu_model.cuda()
    opts = [make_optimizer(m, "extension") for m in (cpu_model, gpu_model)]
    gen = torch.Generator().manual_seed(3)
    logging.disable(logging.WARNING)
    try:
        for _ in range(40):
            for (_, pc), (_, pg) in zip(cpu_model.named_parameters(), gpu_model.named_parameters()):
                if pc.requires_grad:
                    pc.grad = torch.randn(pc.shape, generator=gen) * 0.1
                    pg.grad = pc.grad.cuda()
            for o in opts:
                o.step()
    finally:
        logging.disable(logging.NOTSET)
    sd = {k: v.cpu() for k, v in gpu_model.state_dict().items()}
    assert max_rel_err(sd, cpu_model.state_dict()) < REL_TOL


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_low_precision(dtype, ext_cuda):
    ref = _quiet(train, "reference", steps=12, inf_step=-1, dtype=dtype, device="cuda")
    ext = _quiet(train, "extension", steps=12, inf_step=-1, dtype=dtype, device="cuda")
    assert max_rel_err(ext[0].state_dict(), ref[0].state_dict()) <= 2 * torch.finfo(dtype).eps
