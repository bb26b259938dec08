"""Bucketing sized to the data, and no silent empty training: on a small corpus icefall's 30
buckets each hold less than one batch and drop_last throws every batch away. The data module caps
the buckets so batches come out; data that cannot fill one batch, and an epoch that yields none,
stop with an error that says what to change, before any epoch checkpoint is written."""
import pytest

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("sentencepiece", reason="the 'data' extra (sentencepiece) is not installed")

from lhotse.dataset import DynamicBucketingSampler  # noqa: E402

from recipes.synthetic.run import train_argv  # noqa: E402
from recipes.synthetic.tones import make_tone_corpus  # noqa: E402
from zipformer_fast.data import datamodule  # noqa: E402
from zipformer_fast.data.bucketing import BatchingError, check_epoch, plan_bucketing  # noqa: E402
from zipformer_fast.data.datamodule import AsrDataModule, DataConfig, load_split  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 40 cuts of 1.1-2.4 s: about 70 s of audio.
    return make_tone_corpus(tmp_path_factory.mktemp("tones"), n_train=40, n_dev=2, n_test=2)


def _train_cuts(corpus):
    return load_split(corpus / "manifests", "train", lazy=True)


def test_icefall_bucketing_on_small_data_yields_nothing(corpus):
    """The failure being guarded against: lhotse's sampler with 30 buckets and drop_last."""
    sampler = DynamicBucketingSampler(_train_cuts(corpus), max_duration=8.0, num_buckets=30,
                                      drop_last=True, shuffle=True, seed=0)
    assert list(sampler) == []


def test_buckets_are_capped_so_every_epoch_trains(corpus):
    cuts = _train_cuts(corpus)
    seconds = sum(c.duration for c in cuts)
    dm = AsrDataModule(DataConfig(max_duration=8.0, num_buckets=30, spec_augment=False))
    loader = dm.train_dataloader(cuts)
    plan = dm.train_plan
    assert plan.complete and plan.num_cuts == 40 and plan.seconds == pytest.approx(seconds)
    # Each bucket holds at least 4 batches of audio; buffers no larger than the data.
    assert plan.num_buckets == max(1, int(seconds // (4 * 8.0))) < 30 and plan.capped
    assert plan.buffer_size == plan.shuffle_buffer_size == 40
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) >= 0.5 * plan.expected_batches > 0
    check_epoch(len(batches), plan, epoch=1)  # no error


def test_large_data_keeps_the_requested_buckets(corpus):
    """The scan stops once every bucket can fill 4 batches; icefall's buffer sizes are kept."""
    plan = plan_bucketing(_train_cuts(corpus), max_duration=1.0, num_buckets=3)
    assert not plan.complete and plan.num_buckets == 3 and plan.expected_batches is None
    assert plan.num_cuts < 40 and plan.seconds >= 3 * 4 * 1.0
    assert plan.buffer_size == 3 * 5000


def test_data_smaller_than_one_batch_is_an_error(corpus):
    with pytest.raises(BatchingError, match=r"cannot fill one batch.*lower\s+--max-duration"):
        plan_bucketing(_train_cuts(corpus), max_duration=1000.0, num_buckets=30)
    with pytest.raises(BatchingError, match="2 process"):  # per rank: max_duration x world_size
        plan_bucketing(_train_cuts(corpus), max_duration=45.0, num_buckets=30, world_size=2)
    with pytest.raises(BatchingError, match="no training cuts"):
        plan_bucketing(_train_cuts(corpus).filter(lambda c: False), max_duration=8.0, num_buckets=30)


def test_epoch_with_no_or_few_batches_is_an_error(corpus):
    plan = plan_bucketing(_train_cuts(corpus), max_duration=4.0, num_buckets=30)
    with pytest.raises(BatchingError, match=r"epoch 3 produced no training batch.*--max-duration.*--num-buckets"):
        check_epoch(0, plan, epoch=3)
    few = int(plan.expected_batches * 0.5) - 1
    with pytest.raises(BatchingError, match=f"produced {few} batches where its audio implies about"):
        check_epoch(few, plan, epoch=1)
    with pytest.raises(BatchingError, match="no training batch"):
        check_epoch(0, None, epoch=1)  # without a plan too


def _train(corpus, exp_dir, **kw):
    from recipes import train
    settings = dict(max_duration=8, num_buckets=30, num_epochs=2, valid_split="", average_period=1,
                    save_every_n=2, threads=1, progress=0, backend="reference", device="cpu")
    return train.main(train_argv(corpus, exp_dir, {**settings, **kw}))


def test_training_stops_loudly_when_an_epoch_has_no_batch(corpus, tmp_path, monkeypatch):
    """With the cap switched off (icefall's behaviour) the first epoch yields nothing: training
    stops with the reason instead of writing epoch-1.pt and a summary of a run that never trained."""
    def uncapped(cuts, max_duration, num_buckets, world_size=1, drop_last=True):
        plan = plan_bucketing(cuts, max_duration, num_buckets, world_size, drop_last)
        plan.num_buckets = num_buckets
        return plan
    monkeypatch.setattr(datamodule, "plan_bucketing", uncapped)
    with pytest.raises(SystemExit, match=r"epoch 1 produced no training batch.*30 duration buckets"):
        _train(corpus, tmp_path / "exp")
    assert not list((tmp_path / "exp").glob("*.pt"))
    assert not (tmp_path / "exp" / "train_summary.json").exists()


def test_training_refuses_data_that_cannot_fill_a_batch(corpus, tmp_path):
    with pytest.raises(SystemExit, match=r"cannot fill one batch of --max-duration 500"):
        _train(corpus, tmp_path / "exp", max_duration=500)
    assert not list((tmp_path / "exp").glob("*.pt"))
