"""The streaming recipe path: `recipes.synthetic.run --quick --causal` trains a causal model
(icefall's --causal / --chunk-size / --left-context-frames flags), decodes it with full context,
simulated streaming and real streaming (recipes.decode --chunk-size/--left-context-frames
[--streaming 1]), and records WERs, latency and RTF. Accuracy needs the full run; this checks the
plumbing: one hypothesis per utterance for each of the six decodings, and the record's fields."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_recipe_synthetic import ROOT, _require_tools

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")


def test_quick_causal_recipe_decodes_three_ways(tmp_path):
    _require_tools()
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # PyTorch path on CPU
    record = tmp_path / "streaming.json"
    proc = subprocess.run(
        [sys.executable, "-m", "recipes.synthetic.run", "--quick", "--causal", "--train-steps", "10",
         "--stream-chunk-size", "16", "--stream-left-context", "64", "--device", "cpu", "--threads", "1",
         "--backend", "reference", "--data-dir", str(tmp_path / "data"), "--exp-dir", str(tmp_path / "exp"),
         "--record", str(record)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ck = __import__("torch").load(tmp_path / "exp" / "checkpoint-10.pt", weights_only=False)
    cfg = ck["params"]["model_config"]
    assert cfg["causal"] and tuple(cfg["chunk_size"]) == (16, 32, 64, -1)
    assert tuple(cfg["left_context_frames"]) == (64, 128, 256, -1)
    for sub in ("full-context", "simulated-chunk16-left64", "streaming-chunk16-left64"):
        for method in ("greedy_search", "modified_beam_search"):
            res = tmp_path / "exp" / f"{method}-{sub}"
            wer = json.loads((res / f"wer-test-{method}.json").read_text())
            assert wer["utterances"] == 8 and wer["streaming"] == sub.startswith("streaming")
            recogs = (res / f"recogs-test-{method}.txt").read_text().splitlines()
            assert sum("\thyp=" in line for line in recogs) == 8
    rec = json.loads(record.read_text())
    assert rec["training"]["steps"] == 10
    assert set(rec["wer"]) == {"full_context", "simulated_streaming", "real_streaming"}
    assert rec["latency"] == {"chunk_ms": 320, "lookahead_ms": 130, "max_ms": 450, "mean_ms": 290.0}
    assert all(0 < r for r in rec["streaming_rtf"].values())
    assert "streaming RTF" in proc.stdout
