"""ScaledAdam: the compiled extension, the torch._foreach path and the per-parameter reference
(icefall optim.py ScaledAdam) give the same parameters. Tolerance: 2e-6 of each tensor's max-abs value after 50
fp32 steps (the paths differ only in summation order / rounding, ~1e-7 per step).

The model mixes the shapes a Zipformer has: matrices, conv kernels, biases, a numel-1 scalar
(like BiasNorm.log_scale), a parameter with no gradient, and a second group with its own lr.
Training runs under torch.amp.GradScaler with an inf injected into one gradient (that step must
be skipped without touching the optimizer state), with clipping_scale=2.0 so the clipping
threshold (set at steps 10/20/40) is exercised.
"""
import copy
import logging

import pytest
import torch

from zipformer_fast.optim import ScaledAdam
from zipformer_fast.optim.extension import load_extension

REL_TOL = 2e-6
INF_STEP = 17


class TinyNet(torch.nn.Module):
    def __init__(self, d_in=16, d=32, d_out=8):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d)
        self.conv = torch.nn.Conv1d(d, d, 3, padding=1, groups=4)
        self.out = torch.nn.Linear(d, d_out)
        self.log_scale = torch.nn.Parameter(torch.tensor(0.5))
        self.unused = torch.nn.Parameter(torch.randn(4, 4))  # never gets a gradient
        self.unused.requires_grad_(False)

    def forward(self, x):
        h = torch.nn.functional.silu(self.lin(x))
        h = h + self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.out(h) * self.log_scale.exp()


def make_optimizer(model, impl, **kw):
    body = [(n, p) for n, p in model.named_parameters() if not n.startswith("out.")]
    head = [(n, p) for n, p in model.named_parameters() if n.startswith("out.")]
    kw.setdefault("clipping_scale", 2.0)
    return ScaledAdam([{"named_params": body}, {"named_params": head, "lr": 0.01}], lr=0.03,
                      implementation=impl, **kw)


def train(impl, steps=50, seed=0, inf_step=INF_STEP, model=None, opt=None, start=0, dtype=None,
          device="cpu"):
    torch.manual_seed(seed)
    model = model or TinyNet().to(device)
    if dtype is not None and start == 0:
        model = model.to(dtype)
    opt = opt or make_optimizer(model, impl)
    # GradScaler refuses fp16 gradients (it unscales in place), so low-precision params go without
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 8, enabled=dtype is None)
    gen = torch.Generator().manual_seed(1000 + start)
    losses = []
    for i in range(start, start + steps):
        x = torch.randn(4, 10, 16, generator=gen).to(device)
        y = torch.randn(4, 10, 8, generator=gen).to(device)
        if dtype is not None:
            x, y = x.to(dtype), y.to(dtype)
        loss = ((model(x) - y) ** 2).float().mean()
        opt.zero_grad()
        scaler.scale(loss).backward()
        if i == inf_step:
            model.lin.weight.grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return model, opt, losses


def max_rel_err(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).abs().max() / b[k].float().abs().max().clamp(min=1e-12)).item()
               for k in b)


@pytest.fixture(scope="module")
def ext_cpu():
    ext, why = load_extension("cpu")
    if ext is None:
        pytest.skip(f"CPU extension unavailable here: {why}")
    return ext


@pytest.fixture(scope="module")
def reference_run():
    logging.disable(logging.WARNING)
    try:
        return train("reference")
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("impl", ["extension", "foreach"])
def test_fast_paths_match_reference(impl, reference_run, ext_cpu):
    ref_model, ref_opt, ref_losses = reference_run
    logging.disable(logging.WARNING)
    try:
        model, opt, losses = train(impl)
    finally:
        logging.disable(logging.NOTSET)
    assert max_rel_err(model.state_dict(), ref_model.state_dict()) < REL_TOL
    # the injected inf step was skipped: 49 real steps, state untouched by the skipped one
    first = opt.state[opt.param_groups[0]["params"][0]]
    assert first["step"] == 49
    assert "model_norm_threshold" in first  # clipping really ran
    torch.testing.assert_close(first["model_norms"], ref_opt.state[ref_opt.param_groups[0]["params"][0]]["model_norms"],
                               rtol=1e-5, atol=0)
    # the gradient-less parameter is never moved (zero gradient from the start)
    torch.testing.assert_close(model.unused, ref_model.unused, rtol=0, atol=0)
    torch.manual_seed(0)
    assert torch.equal(model.unused, TinyNet().unused)
    assert losses[-1] < losses[0]


def test_skipped_step_leaves_state_untouched(ext_cpu):
    """GradScaler skips opt.step() on an inf gradient: the state after the skipped step equals the
    state before it, bit for bit."""
    model, opt, _ = train("extension", steps=INF_STEP, inf_step=-1)
    before = copy.deepcopy(opt.state_dict())
    model2, opt2, _ = train("extension", steps=1, inf_step=INF_STEP, model=model, opt=opt, start=INF_STEP)
    after = opt2.state_dict()
    for k, st in before["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, after["state"][k][name]), (k, name)
            else:
                assert v == after["state"][k][name]


@pytest.mark.parametrize("impl", ["extension", "foreach", "reference"])
def test_nonfinite_norm_zeroes_the_gradient(impl, ext_cpu):
    """Once a clipping threshold exists, a NaN gradient gives gamma = 0: the step runs as if the
    gradient were zero (as icefall's ScaledAdam does), so parameters stay finite and equal a zero-grad step.
    Clipping is per parameter group: the head group (no NaN) takes its normal step."""
    logging.disable(logging.WARNING)
    try:
        torch.manual_seed(0)
        model = TinyNet()
        opt = make_optimizer(model, impl)
        gen = torch.Generator().manual_seed(5)
        for i in range(12):
            x, y = torch.randn(4, 10, 16, generator=gen), torch.randn(4, 10, 8, generator=gen)
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        twin = copy.deepcopy(model)
        twin_opt = make_optimizer(twin, impl)
        twin_opt.load_state_dict(opt.state_dict())
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        model.conv.weight.grad[0, 0, 0] = float("nan")
        opt.step()
        for (name, p), (_, q) in zip(twin.named_parameters(), model.named_parameters()):
            if name.startswith("out."):
                p.grad = q.grad.clone()
            else:
                p.grad = torch.zeros_like(p) if p.requires_grad else None
        twin_opt.step()
    finally:
        logging.disable(logging.NOTSET)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert max_rel_err(model.state_dict(), twin.state_dict()) == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_keep_fp32_moments(dtype, ext_cpu):
    """fp16/bf16 params: moments stay fp32 and the extension matches the reference to within
    one rounding of the parameter dtype (2 ulp at the tensor's scale)."""
    logging.disable(logging.WARNING)
    try:
        runs = {impl: train(impl, steps=12, inf_step=-1, dtype=dtype) for impl in ("extension", "reference")}
    finally:
        logging.disable(logging.NOTSET)
    opt = runs["extension"][1]
    for st in opt.state.values():
        assert st["exp_avg_sq"].dtype == torch.float32 and st["delta"].dtype == torch.float32
    ulp = torch.finfo(dtype).eps
    assert max_rel_err(runs["extension"][0].state_dict(), runs["reference"][0].state_dict()) <= 2 * ulp
