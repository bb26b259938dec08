"""DDP on CPU: `torchrun --standalone --nproc_per_node=2` (gloo) trains a few steps on different
data per rank; at the end every rank must hold exactly rank 0's parameters (train.py broadcasts
rank 0's tensors and reports the largest difference in train_summary.json)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

from recipes.synthetic.run import train_argv  # noqa: E402
from recipes.synthetic.tones import make_tone_corpus  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_two_process_gloo_ranks_stay_identical(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun not found next to the Python interpreter"
    corpus = make_tone_corpus(tmp_path / "tones", n_train=30, n_dev=4, n_test=2)
    exp = tmp_path / "exp"
    argv = train_argv(corpus, exp, dict(
        max_duration=8, num_buckets=2, max_steps=4, save_every_n=2, average_period=1, log_interval=1,
        valid_interval=2, warm_step=4, lr_warmup_batches=4, ref_duration=1, threads=1, progress=0,
        use_ctc=1, backend="reference", device="cpu"))
    # Training runs the pure-PyTorch path (conftest's TRITON_INTERPRET is for the kernel tests).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "recipes.train"] + argv,
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["batch_idx_train"] == 4
    first = summary["first_batch_ids_per_rank"]
    assert len(first) == 2 and first[0] and first[1]
    assert not set(first[0]) & set(first[1]), "both ranks got the same cuts: not data-parallel"
    assert summary["max_param_diff_across_ranks"] == 0.0
    # Validation (every 2 steps and at the epoch end) on the ranks' shards, all-reduced.
    assert {2, 4} <= {b for b, _ in summary["valid"]}
    assert all(0 < v["valid_loss_per_frame"] < 100 for _, v in summary["valid"])
    # Rank 0 wrote the checkpoints, with an averaged model.
    assert (exp / "checkpoint-4.pt").exists()
