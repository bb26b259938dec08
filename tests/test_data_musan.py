"""MUSAN noise mixing: cuts prepared from a MUSAN-layout directory (icefall's 10 s windows longer
than 5 s, with Fbank) are mixed into training batches; asking for MUSAN without its cuts stops with
an error that names what to download."""
import numpy as np
import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

import torch  # noqa: E402

from recipes.synthetic.tones import make_tone_corpus  # noqa: E402
from zipformer_fast.data.datamodule import AsrDataModule, DataConfig, batch_inputs, load_split  # noqa: E402
from zipformer_fast.data.manifests import musan_cuts  # noqa: E402


def _fake_musan(root):
    """musan/{music,noise,speech}/<source>/*.wav, 16 kHz: one 12 s and one 4 s file per part, and
    music's ANNOTATIONS (id, genres, vocals, artist) as in the real corpus."""
    import soundfile
    rng = np.random.default_rng(0)
    for part in ("music", "noise", "speech"):
        d = root / "musan" / part / f"{part}-source"
        d.mkdir(parents=True)
        for name, seconds in (("long", 12.0), ("short", 4.0)):
            soundfile.write(d / f"{part}-{name}.wav", 0.3 * rng.standard_normal(int(16000 * seconds)), 16000)
        if part == "music":
            (d / "ANNOTATIONS").write_text("music-long classical N someone\nmusic-short jazz N someone\n")
    return root / "musan"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("musan")
    corpus = make_tone_corpus(tmp / "tones", n_train=16, n_dev=2, n_test=2)
    cuts = musan_cuts(_fake_musan(tmp), tmp / "musan_feats")
    path = tmp / "musan_cuts.jsonl.gz"
    cuts.to_file(path)
    return corpus, cuts, path


def test_musan_cuts_are_icefall_windows_with_fbank(data):
    _, cuts, _ = data
    # Each 12 s file gives a 10 s window and a 2 s remainder (dropped); 4 s files are dropped.
    assert len(cuts) == 3
    for cut in cuts:
        assert cut.duration == pytest.approx(10.0) and cut.has_features
        assert cut.load_features().shape == (1000, 80)


def _first_batch(corpus, musan):
    dm = AsrDataModule(DataConfig(max_duration=8.0, num_buckets=2, spec_augment=False, shuffle=False,
                                  musan_cuts=musan))
    loader = dm.train_dataloader(load_split(corpus / "manifests", "train", lazy=True))
    loader.sampler.set_epoch(0)
    return batch_inputs(next(iter(loader)))


def test_musan_noise_is_mixed_into_training_batches(data):
    corpus, _, path = data
    clean_feats, clean_lens, clean_texts, clean_ids = _first_batch(corpus, None)
    noisy_feats, noisy_lens, noisy_texts, noisy_ids = _first_batch(corpus, str(path))
    assert noisy_ids == clean_ids and noisy_texts == clean_texts and torch.equal(noisy_lens, clean_lens)
    # CutMix (p = 0.5): some utterances are changed by the noise, and only within their frames.
    changed = [not torch.equal(noisy_feats[i, :n], clean_feats[i, :n]) for i, n in enumerate(clean_lens.tolist())]
    assert any(changed)


def test_missing_musan_cuts_name_what_to_download(data, tmp_path):
    corpus, _, _ = data
    with pytest.raises(FileNotFoundError, match=r"openslr\.org/17.*--musan-dir"):
        _first_batch(corpus, str(tmp_path / "musan_cuts.jsonl.gz"))
    with pytest.raises(FileNotFoundError, match=r"needs music/, speech/ and noise/.*openslr\.org/17"):
        musan_cuts(tmp_path, tmp_path / "feats")
