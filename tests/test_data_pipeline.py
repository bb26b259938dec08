"""lhotse data pipeline: manifests + Fbank shapes, offline speed perturbation, and the resumable
data module (a restored loader yields exactly the batches the interrupted one had left, with the
same augmentation)."""
import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

import torch  # noqa: E402

from recipes.synthetic.tones import make_tone_corpus  # noqa: E402
from zipformer_fast.data.datamodule import AsrDataModule, DataConfig, batch_inputs, load_split  # noqa: E402
from zipformer_fast.data.manifests import speed_perturb  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_tone_corpus(tmp_path_factory.mktemp("tones"), n_train=24, n_dev=4, n_test=4)


def test_fbank_is_80_dim_at_100_frames_per_second(corpus):
    cuts = load_split(corpus / "manifests", "train")
    for cut in list(cuts)[:5]:
        feats = cut.load_features()
        assert feats.shape[1] == 80
        # lhotse (snip_edges=False): frames = round(num_samples / 160), i.e. 100 per second.
        assert abs(feats.shape[0] - cut.duration * 100) <= 1
        assert torch.isfinite(torch.from_numpy(feats)).all()


def test_speed_perturbation_adds_rescaled_copies(corpus):
    cuts = load_split(corpus / "manifests", "dev").drop_features()
    sp = speed_perturb(cuts, (0.9, 1.1)).to_eager()
    assert len(sp) == 3 * len(cuts)
    base = {c.id: c.duration for c in cuts}
    for c in sp:
        for factor in (0.9, 1.1):
            suffix = f"_sp{factor}"
            if c.id.endswith(suffix):
                assert c.duration == pytest.approx(base[c.id[:-len(suffix)]] / factor, abs=1e-3)


def test_fbank_of_lazy_cut_sets(corpus, tmp_path):
    """trim_to_supervisions and speed perturbation return lazy cut sets, which have no len(); lhotse's
    feature extraction with a progress bar needs one."""
    from zipformer_fast.data.manifests import compute_fbank
    lazy = speed_perturb(load_split(corpus / "manifests", "dev").drop_features().trim_to_supervisions(), (1.1,))
    assert lazy.is_lazy
    cuts = compute_fbank(lazy, tmp_path / "feats", num_jobs=4, progress_bar=True)
    assert len(cuts) == 8 and all(c.has_features for c in cuts)


def _batches(loader, n=None):
    out = []
    for k, batch in enumerate(loader):
        if n is not None and k == n:
            break
        feats, lens, texts, ids = batch_inputs(batch)
        out.append((batch["epoch"], batch["batch_index"], ids, feats.clone(), lens.clone()))
    return out


def _config(**kw):
    return DataConfig(**{**dict(max_duration=8.0, num_buckets=2, spec_augment=True, time_warp_factor=20), **kw})


def test_batches_have_consistent_shapes(corpus):
    dm = AsrDataModule(_config())
    loader = dm.train_dataloader(load_split(corpus / "manifests", "train", lazy=True))
    loader.sampler.set_epoch(0)
    batches = _batches(loader)
    assert len(batches) >= 3
    for _, _, ids, feats, lens in batches:
        assert feats.ndim == 3 and feats.shape[0] == len(ids) == lens.shape[0] and feats.shape[2] == 80
        assert int(lens.max()) == feats.shape[1]
        assert sum(lens.tolist()) / 100 <= 8.0 + 0.05  # max_duration bound (seconds)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_loader_continues_exactly(corpus, num_workers):
    """Skip k batches via the state a checkpoint holds: the remaining batches (ids, features after
    SpecAugment, lengths) equal the uninterrupted epoch's, with or without worker processes."""
    cuts = load_split(corpus / "manifests", "train", lazy=True)
    full_loader = AsrDataModule(_config(num_workers=num_workers)).train_dataloader(cuts)
    full_loader.sampler.set_epoch(3)
    full = _batches(full_loader)
    k = 2
    resumed_loader = AsrDataModule(_config(num_workers=num_workers)).train_dataloader(cuts)
    resumed_loader.sampler.load_state_dict(resumed_loader.sampler.state_dict(0) | {"epoch": 3, "batches_consumed": k})
    resumed = _batches(resumed_loader)
    assert len(resumed) == len(full) - k
    for a, b in zip(full[k:], resumed):
        assert a[:3] == b[:3]
        assert torch.equal(a[3], b[3]) and torch.equal(a[4], b[4])
    # The restore applies once: the next pass is a whole epoch again.
    assert len(_batches(resumed_loader)) == len(full)


def test_augmentation_differs_between_epochs_and_is_not_identity(corpus):
    cuts = load_split(corpus / "manifests", "train", lazy=True)
    loader = AsrDataModule(_config(shuffle=False)).train_dataloader(cuts)
    loader.sampler.set_epoch(0)
    e0 = _batches(loader)
    loader.sampler.set_epoch(1)
    e1 = _batches(loader)
    plain = AsrDataModule(_config(shuffle=False, spec_augment=False)).train_dataloader(cuts)
    plain.sampler.set_epoch(0)
    p0 = _batches(plain)
    assert [b[2] for b in e0] == [b[2] for b in e1] == [b[2] for b in p0]  # same cuts (no shuffle)
    assert any(not torch.equal(a[3], b[3]) for a, b in zip(e0, e1))
    assert any(not torch.equal(a[3], b[3]) for a, b in zip(e0, p0))


def test_missing_manifest_and_bad_options_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare step"):
        load_split(tmp_path, "train")
    with pytest.raises(ValueError, match="on_the_fly_feats"):
        AsrDataModule(DataConfig(speed_perturb=True))
