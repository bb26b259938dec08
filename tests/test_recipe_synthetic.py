"""The synthetic recipe's CI run (`python -m recipes.synthetic.run --quick`): espeak-ng corpus ->
Fbank -> tokenizer -> 60 training steps of the recipe's Zipformer transducer + CTC -> greedy and
modified-beam-search decoding. Checks that the loss goes down and that decoding writes one
hypothesis per utterance and a WER; accuracy itself needs the full run (recipes/synthetic/README.md)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

ROOT = Path(__file__).resolve().parents[1]


def _require_tools():
    missing = [t for t in ("espeak-ng", "sox") if shutil.which(t) is None]
    if not missing:
        return
    msg = f"{', '.join(missing)} not installed: run `bash recipes/synthetic/ensure_tools.sh` (as root)"
    if os.environ.get("CI"):
        pytest.fail(msg)  # CI must provide them; a skip would hide the recipe test
    pytest.skip(msg)


def test_quick_synthetic_recipe_trains_and_decodes(tmp_path):
    _require_tools()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # PyTorch path on CPU
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.synthetic.run", "--quick", "--device", "cpu", "--threads", "2",
         "--backend", "reference", "--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((tmp_path / "exp" / "run_summary.json").read_text())
    assert summary["steps"] == 60
    curve = [loss for _, loss in summary["loss_curve"]]
    assert len(curve) == 12
    # Per-frame training loss over steps 56-60 is clearly below steps 1-5 (measured 6.2 -> 2.4 by step 30).
    assert curve[-1] < 0.8 * curve[0], curve
    for method in ("greedy_search", "modified_beam_search"):
        res = tmp_path / "exp" / method
        wer = json.loads((res / f"wer-test-{method}.json").read_text())
        assert wer["utterances"] == 8 and wer["words"] > 0
        recogs = (res / f"recogs-test-{method}.txt").read_text().splitlines()
        hyps = [line.split("hyp=", 1)[1] for line in recogs if "\thyp=" in line]
        # One hypothesis line per test utterance. (Whether they contain words is an accuracy
        # question: at 60 steps the current model still emits only blanks, see recipes/synthetic/README.md.)
        assert len(hyps) == 8
    assert "test WER" in proc.stdout
