"""The LibriSpeech recipe as a user runs it, on a miniature corpus in LibriSpeech's exact layout
(recipes/librispeech/miniature.py: <part>/<speaker>/<chapter>/*.flac + .trans.txt, 16 kHz, upper-case
transcripts, spoken by espeak-ng): run.sh's stages with their defaults (3-way speed perturbation,
Fbank on disk, BPE) -> a few training steps of the tiny model on the CPU -> decoding test-clean.
And the same for a user's own lhotse cut manifests (--train-cuts/--valid-cuts/--test-cuts), without
precomputed features."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "recipes" / "synthetic" / "model_tiny.json")
# The PyTorch path on the CPU (conftest's Triton interpreter is for the kernel tests).
ENV = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
CPU = ["--device", "cpu", "--threads", "1", "--backend", "reference"]
TRAIN_CPU = CPU + ["--num-workers", "0", "--tensorboard", "0", "--progress", "0", "--average-period", "1"]
# 12 training utterances (36 cuts after speed perturbation, ~75 s of audio), 3 dev, 3 test.
PARTS = {"train-clean-100": (2, 2, 3), "dev-clean": (1, 1, 3), "test-clean": (1, 1, 3)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from recipes.synthetic.prepare import check_tools
    try:
        check_tools()
    except RuntimeError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))  # CI must provide espeak-ng and sox; a skip would hide the recipe test
        pytest.skip(str(exc))
    from recipes.librispeech.miniature import make_miniature_librispeech
    return make_miniature_librispeech(tmp_path_factory.mktemp("corpus"), PARTS)


def _run(cmd):
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
    return proc


def _run_sh(corpus, data, exp, *extra):
    return _run(["bash", "recipes/librispeech/run.sh", "--corpus-dir", str(corpus), "--data-dir", str(data),
                 "--exp-dir", str(exp), "--python", sys.executable, "--model-config", TINY,
                 "--max-duration", "20", "--epochs", "1", "--avg", "1", "--method", "greedy_search",
                 "--train-args", " ".join(TRAIN_CPU), "--decode-args", " ".join(CPU), *extra])


def test_corpus_has_librispeech_layout(corpus):
    assert corpus.name == "LibriSpeech" and sorted(p.name for p in corpus.iterdir() if p.is_dir()) == sorted(PARTS)
    trans = sorted(corpus.glob("train-clean-100/*/*/*.trans.txt"))
    assert len(trans) == 4
    spk, chap = trans[0].parent.parent.name, trans[0].parent.name
    assert trans[0].name == f"{spk}-{chap}.trans.txt"
    uid, text = trans[0].read_text().splitlines()[0].split(" ", 1)
    assert uid == f"{spk}-{chap}-0000" and text == text.upper()
    import soundfile
    info = soundfile.info(str(trans[0].parent / f"{uid}.flac"))
    assert info.format == "FLAC" and info.samplerate == 16000 and info.channels == 1


def test_run_sh_prepares_trains_and_decodes(corpus, tmp_path):
    import lhotse
    data, exp = tmp_path / "data", tmp_path / "exp"
    proc = _run_sh(corpus, data, exp)
    man = data / "manifests"

    train = lhotse.load_manifest(man / "cuts_train-clean-100.jsonl.gz")
    ids = [c.id for c in train]
    base = [i for i in ids if "_sp" not in i]
    assert len(base) == 12 and len(ids) == 36
    assert sorted(ids) == sorted(base + [f"{i}_sp0.9" for i in base] + [f"{i}_sp1.1" for i in base])
    by_id = {c.id: c for c in train}
    for i in (base[0], f"{base[0]}_sp0.9", f"{base[0]}_sp1.1"):
        feats = by_id[i].load_features()
        assert feats.shape[1] == 80 and abs(feats.shape[0] - 100 * by_id[i].duration) <= 1
    assert by_id[f"{base[0]}_sp0.9"].duration == pytest.approx(by_id[base[0]].duration / 0.9, abs=1e-3)
    assert sorted(c.id for c in lhotse.load_manifest(man / "cuts_train.jsonl.gz")) == sorted(ids)
    test = lhotse.load_manifest(man / "cuts_test-clean.jsonl.gz")
    assert len(test) == 3 and all("_sp" not in c.id and c.has_features for c in test)
    assert (data / "lang" / "bpe.model").is_file()

    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["batch_idx_train"] > 0 and summary["epoch"] == 2  # one whole epoch trained
    assert (exp / "epoch-1.pt").is_file()
    wer = json.loads((exp / "greedy_search" / "wer-test-clean-greedy_search.json").read_text())
    assert wer["utterances"] == 3 and wer["words"] > 0
    assert "test-clean greedy_search: WER" in proc.stdout

    # Rerunning the data stages redoes nothing.
    outputs = sorted(man.glob("*.jsonl.gz")) + [data / "lang" / "bpe.model"]
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    again = _run_sh(corpus, data, exp, "--stage", "1", "--stop-stage", "4").stdout
    assert again.count("exists, skipped") == 6  # 3 parts, train, dev, bpe
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes


def test_own_lhotse_cuts_without_features_train_and_decode(corpus, tmp_path):
    """A user's CutSet (here built with lhotse from the same audio, no Fbank stored): a BPE model
    from its transcripts, training with on-the-fly Fbank, validation, decoding."""
    import lhotse
    from lhotse.recipes import prepare_librispeech
    manifests = prepare_librispeech(corpus, dataset_parts=list(PARTS))
    paths = {}
    for part, name in (("train-clean-100", "my_train"), ("dev-clean", "my_dev"), ("test-clean", "my_test")):
        cuts = lhotse.CutSet.from_manifests(**manifests[part])
        paths[name] = tmp_path / f"{name}.jsonl.gz"
        cuts.to_file(paths[name])
    bpe, exp = tmp_path / "lang" / "bpe", tmp_path / "exp"
    _run([sys.executable, "-m", "zipformer_fast.data.tokenizer", "--cuts", str(paths["my_train"]),
          "--output", str(bpe), "--vocab-size", "100"])
    _run([sys.executable, "-m", "recipes.train", "--train-cuts", str(paths["my_train"]),
          "--valid-cuts", str(paths["my_dev"]), "--bpe-model", f"{bpe}.model", "--exp-dir", str(exp),
          "--model-config", TINY, "--max-duration", "10", "--max-steps", "3", "--valid-interval", "3",
          *TRAIN_CPU])
    summary = json.loads((exp / "train_summary.json").read_text())
    assert summary["batch_idx_train"] == 3
    assert summary["valid"] and summary["valid"][0][0] == 3  # validation ran on featureless cuts
    proc = _run([sys.executable, "-m", "recipes.decode", "--exp-dir", str(exp), "--bpe-model", f"{bpe}.model",
                 "--test-cuts", str(paths["my_test"]), "--iter", "0", "--avg", "1",
                 "--decoding-method", "greedy_search", *CPU])
    wer = json.loads((exp / "greedy_search" / "wer-my_test-greedy_search.json").read_text())
    assert wer["utterances"] == 3 and wer["words"] > 0
    assert "my_test greedy_search: WER" in proc.stdout
    graphs = subprocess.run([sys.executable, "-m", "recipes.decode", "--exp-dir", str(exp), "--bpe-model",
                             f"{bpe}.model", "--test-cuts", str(paths["my_test"]), "--cuda-graphs", "1", *CPU],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert graphs.returncode != 0 and "--cuda-graphs needs a CUDA device" in graphs.stderr, graphs.stderr[-2000:]


def test_prepare_without_stored_fbank_trains_on_the_fly(corpus, tmp_path):
    """--precompute-fbank 0: speed-perturbed cuts without features; batches get Fbank on the fly
    (from the resampled audio of the perturbed copies)."""
    import lhotse
    import torch
    from zipformer_fast.data.datamodule import AsrDataModule, DataConfig, batch_inputs, load_split
    data = tmp_path / "data"
    _run([sys.executable, "-m", "recipes.librispeech.prepare", "--corpus-dir", str(corpus), "--data-dir", str(data),
          "--precompute-fbank", "0", "--stop-stage", "3"])
    cuts = lhotse.load_manifest(data / "manifests" / "cuts_train.jsonl.gz")
    assert len(cuts) == 36 and not any(c.has_features for c in cuts)
    assert not list((data / "manifests").glob("feats_*"))
    dm = AsrDataModule(DataConfig(max_duration=20.0, spec_augment=False))
    loader = dm.train_dataloader(load_split(data / "manifests", "train", lazy=True))
    loader.sampler.set_epoch(0)
    durations = {c.id: c.duration for c in cuts}
    seen = []
    for batch in loader:
        feats, lens, texts, ids = batch_inputs(batch)
        assert feats.shape[2] == 80 and torch.isfinite(feats).all()
        for n, i in zip(lens.tolist(), ids):
            assert abs(n - 100 * durations[i]) <= 1
        seen += ids
    assert len(seen) >= 18 and any(i.endswith("_sp0.9") for i in seen)
