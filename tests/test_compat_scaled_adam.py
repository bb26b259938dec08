"""zipformer_fast.optim.ScaledAdam as a drop-in for icefall's (the `zipformer` package's optim.py,
which is icefall's egs/librispeech/ASR/zipformer/optim.py with two imports changed):

- it takes icefall train.py's parameter groups (get_parameter_groups_with_lrs(..., include_names=True):
  groups of "named_params" (name, parameter) pairs with their own "lr") and steps like icefall's;
- a state dict saved by icefall's optimizer loads into ours (layout detected and converted) and
  ours exports icefall's layout (`icefall_state_dict()`), so a run continues on either optimizer:
  after the switch both follow the same trajectory (relative parameter difference <= 1e-6: the
  clipping norm is summed in another order);
- the conversions are exact inverses of each other.
The "model" is a set of parameters with repeated shapes (multi-member buckets), vectors, a scalar
and two learning-rate groups; the steps cover parameter-scale updates (size_update_period 4) and
gradient clipping (threshold recomputed every 5 steps, clipping active).
"""
import copy
import random
from collections import defaultdict

import pytest
import torch

import zipformer_fast
from zipformer_fast.optim import ScaledAdam, scaled_adam_state_from_icefall, scaled_adam_state_to_icefall
from zipformer_package import build_xs, load_package_modules

OPT_ARGS = dict(lr=0.04, clipping_scale=2.0, clipping_update_period=5, size_update_period=4)


@pytest.fixture(scope="module")
def pkg():
    return load_package_modules()


def get_parameter_groups_with_lrs(model, lr, include_names=False):
    """icefall/utils.py get_parameter_groups_with_lrs: one group per learning rate, a module's
    `lr_scale` multiplying the lr of everything under it."""
    scales = {name: m.lr_scale for name, m in model.named_modules() if hasattr(m, "lr_scale")}
    by_lr = defaultdict(list)
    for name, p in model.named_parameters():
        parts = name.split(".")
        cur = lr * scales.get("", 1.0)
        for k in range(1, len(parts)):
            cur *= scales.get(".".join(parts[:k]), 1.0)
        by_lr[cur].append((name, p) if include_names else p)
    key = "named_params" if include_names else "params"
    return [{key: ps, "lr": lr} for lr, ps in by_lr.items()]


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Linear(6, 4)
        self.b = torch.nn.Linear(6, 4)
        self.c = torch.nn.Conv1d(4, 4, 3)
        self.log_scale = torch.nn.Parameter(torch.tensor(0.3))
        self.head = torch.nn.Module()
        self.head.w = torch.nn.Parameter(torch.randn(5, 4, generator=g))
        self.head.v = torch.nn.Parameter(torch.randn(4, generator=g))
        self.head.lr_scale = 0.5


def groups(model):
    return get_parameter_groups_with_lrs(model, lr=OPT_ARGS["lr"], include_names=True)


def feed_grads(models, step):
    g = torch.Generator().manual_seed(1000 + step)
    for name, p in models[0].named_parameters():
        grad = torch.randn(p.shape, generator=g) * (3.0 if step % 3 == 0 else 1.0)  # some steps get clipped
        for m in models:
            m.get_parameter(name).grad = grad.clone()


def run(models, optimizers, steps, first):
    for step in range(first, first + steps):
        feed_grads(models, step)
        for o in optimizers:
            o.step()


@torch.no_grad()
def max_rel_diff(m1, m2):
    return max(float((p - m2.get_parameter(n)).norm() / p.norm()) for n, p in m1.named_parameters())



def test_takes_icefall_parameter_groups_and_steps_like_icefall(pkg):
    theirs, ours = Toy(), Toy()
    ours.load_state_dict(theirs.state_dict())
    opt_theirs = pkg["optim"].ScaledAdam(groups(theirs), **OPT_ARGS)
    opt_ours = ScaledAdam(groups(ours), **OPT_ARGS)
    assert [g["lr"] for g in opt_ours.param_groups] == [g["lr"] for g in opt_theirs.param_groups] == [0.04, 0.02]
    assert opt_ours.parameters_names == opt_theirs.parameters_names
    run([theirs, ours], [opt_theirs, opt_ours], 13, 0)
    assert max_rel_diff(ours, theirs) <= 1e-6
    assert max_rel_diff(ours, Toy()) > 0.05  # it did move
    assert opt_ours.state_dict()["param_groups"] == opt_theirs.state_dict()["param_groups"]


def test_icefall_state_loads_into_ours_and_the_run_continues_identically(pkg):
    theirs = Toy()
    opt_theirs = pkg["optim"].ScaledAdam(groups(theirs), **OPT_ARGS)
    run([theirs], [opt_theirs], 11, 0)  # mid-period for both the size update and clipping
    saved = copy.deepcopy(opt_theirs.state_dict())
    index = [n for g in groups(theirs) for n, _ in g["named_params"]].index("a.weight")
    assert saved["state"][index]["exp_avg_sq"].shape == (2, 4, 6)  # icefall's bucket: a.weight, b.weight

    ours = copy.deepcopy(theirs)
    opt_ours = ScaledAdam(groups(ours), **OPT_ARGS)
    opt_ours.load_state_dict(saved)
    assert opt_ours.state[ours.b.weight]["step"] == 11
    clip = [st for st in saved["state"].values() if "model_norm_threshold" in st]
    first = opt_ours.state[opt_ours.param_groups[0]["params"][0]]
    assert len(clip) == 2 and float(first["model_norm_threshold"]) == pytest.approx(clip[0]["model_norm_threshold"])
    run([theirs, ours], [opt_theirs, opt_ours], 9, 11)
    assert max_rel_diff(ours, theirs) <= 1e-6


def test_our_state_exports_to_icefall_and_the_run_continues_identically(pkg):
    ours = Toy()
    opt_ours = ScaledAdam(groups(ours), **OPT_ARGS)
    run([ours], [opt_ours], 12, 0)
    theirs = copy.deepcopy(ours)
    opt_theirs = pkg["optim"].ScaledAdam(groups(theirs), **OPT_ARGS)
    opt_theirs.load_state_dict(opt_ours.icefall_state_dict())
    run([theirs, ours], [opt_theirs, opt_ours], 8, 12)
    assert max_rel_diff(ours, theirs) <= 1e-6


def test_conversions_are_exact_inverses(pkg):
    model = Toy()
    opt = pkg["optim"].ScaledAdam(groups(model), **OPT_ARGS)
    run([model], [opt], 7, 0)
    params = [g["params"] for g in opt.param_groups]
    icefall_sd = opt.state_dict()
    back = scaled_adam_state_to_icefall(scaled_adam_state_from_icefall(icefall_sd, params), params)
    assert back["state"].keys() == icefall_sd["state"].keys()
    for k, st in icefall_sd["state"].items():
        assert back["state"][k].keys() == st.keys(), k
        for name, v in st.items():
            same = torch.equal(back["state"][k][name], v) if torch.is_tensor(v) else back["state"][k][name] == v
            assert same, (k, name)


def test_a_training_step_of_the_package_model_with_our_scaled_adam(pkg, golden):
    """The accelerated package model trains with our optimizer on icefall's groups; the update
    equals icefall's optimizer applied to the same gradients."""
    model = zipformer_fast.accelerate(build_xs(pkg, golden["state_dict"]), backend="reference").train()
    model.encoder.encoders[3].lr_scale = 0.5
    for m in model.modules():
        if hasattr(m, "batch_count"):
            m.batch_count = 1000.0  # icefall train.py's set_batch_count
    reference = copy.deepcopy(model)
    opt = ScaledAdam(groups(model), clipping_scale=2.0, lr=0.045)
    opt_ref = pkg["optim"].ScaledAdam(groups(reference), clipping_scale=2.0, lr=0.045)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    originals = list(model.encoder.original_module.parameters())
    random.seed(0)
    torch.manual_seed(0)
    out, lens = model.forward_encoder(golden["features"][:, :100], torch.tensor([100, 77]))
    loss = (out * golden["grad_weights"][:, :out.shape[1]]).sum()
    assert torch.isfinite(loss)
    loss.backward()
    for (_, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        q.grad = None if p.grad is None else p.grad.clone()
    opt.step()
    opt_ref.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    # layer drop (batch 1000 is inside its warm-up) leaves some layers without gradient this step
    assert len(with_grad) > 150 and moved == with_grad  # no gradient: no first step, as icefall
    assert max_rel_diff(model, reference) <= 1e-6
    # the package's own modules hold the updated parameters too (shared objects)
    assert all(any(p is q for q in model.parameters()) for p in originals)
