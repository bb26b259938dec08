"""bench/optimizer.py --smoke runs every implementation on 40 small tensors and writes its
long-format JSON/CSV (to a temp dir, so committed results are untouched)."""
import csv
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_optimizer_smoke(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "bench" / "optimizer.py"), "--smoke",
                          "--device", "cpu", "--out-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    rows = json.loads((tmp_path / "optimizer.json").read_text())
    impls = {r["impl"] for r in rows}
    assert {"extension", "foreach", "reference", "stacked"} <= impls
    assert impls & {"adam_fused", "adam_foreach"}
    for r in rows:
        assert r["step_ms_median"] > 0 and r["n_tensors"] == 40 and r["torch"] and r["device"] == "cpu" and r["command"]
    with open(tmp_path / "optimizer.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
