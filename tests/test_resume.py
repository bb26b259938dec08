"""Kill-and-resume: a training run SIGKILLed after a checkpoint and resumed from it ends with
exactly (bit for bit) the parameters, averaged model and optimizer state of an uninterrupted run
with the same arguments. The run crosses an epoch boundary and uses SpecAugment, so the data
position, augmentation seeds, RNG streams and the modules' Python-side state all have to be
restored."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

import torch  # noqa: E402

from recipes.synthetic.run import train_argv  # noqa: E402
from recipes.synthetic.tones import make_tone_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8
SETTINGS = dict(max_duration=10, num_buckets=2, max_steps=STEPS, save_every_n=2, average_period=1,
                log_interval=1, valid_interval=1000, valid_split="", spec_aug_time_warp=10, use_ctc=1,
                warm_step=4, lr_warmup_batches=4, ref_duration=1, threads=1, progress=0, seed=7, backend="reference")


def _cmd(corpus, exp_dir):
    return [sys.executable, "-m", "recipes.train"] + train_argv(corpus, exp_dir, SETTINGS)


# Training runs the pure-PyTorch path: without a GPU the Triton kernels would run in the
# interpreter that conftest enables for the kernel tests (far too slow for training).
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def _run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_tensors(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # ~30 utterances of 1.1-2.4 s with 10 s batches: an epoch is ~5 steps, so 8 steps cross it.
    return make_tone_corpus(tmp_path_factory.mktemp("tones"), n_train=30, n_dev=2, n_test=2)


def test_killed_run_resumes_exactly(corpus, tmp_path):
    ref_dir, killed_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    _run(_cmd(corpus, ref_dir))

    # Start the same run, SIGKILL it as soon as checkpoint-4.pt exists (mid-run, no clean exit).
    proc = subprocess.Popen(_cmd(corpus, killed_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 600
    while not (killed_dir / "checkpoint-4.pt").exists():
        assert proc.poll() is None, f"run ended before its checkpoint: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint-4.pt after 600 s"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / f"checkpoint-{STEPS}.pt").exists(), "killed too late to test anything"
    # A half-written checkpoint from the kill must not be picked up: only atomic renames exist.
    for p in killed_dir.glob("checkpoint-*.pt"):
        if p.name not in ("checkpoint-2.pt", "checkpoint-4.pt", "checkpoint-6.pt"):
            pytest.fail(f"unexpected file {p.name}")

    resumed = _run(_cmd(corpus, killed_dir))  # --resume auto picks the newest checkpoint
    assert "resumed from" in resumed.stderr

    ref, res = _load(ref_dir / f"checkpoint-{STEPS}.pt"), _load(killed_dir / f"checkpoint-{STEPS}.pt")
    assert ref["params"]["batch_idx_train"] == res["params"]["batch_idx_train"] == STEPS
    assert ref["params"]["epoch"] == res["params"]["epoch"] >= 2, "the run should cross an epoch boundary"
    _assert_same_tensors(ref["model"], res["model"], "model")
    _assert_same_tensors(ref["model_avg"], res["model_avg"], "model_avg")
    ref_opt, res_opt = ref["optimizer"]["state"], res["optimizer"]["state"]
    assert ref_opt.keys() == res_opt.keys()
    for k in ref_opt:
        for name, v in ref_opt[k].items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, res_opt[k][name]), f"optimizer state {k}.{name} differs"
    assert ref["scheduler"] == res["scheduler"]
    # And training really moved the parameters (the comparison is not between two initial models).
    init = _load(ref_dir / "checkpoint-2.pt")["model"]
    assert any(not torch.equal(init[k], ref["model"][k]) for k in init)
