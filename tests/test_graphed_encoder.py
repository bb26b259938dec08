"""GraphedEncoder: bucketed offline encoding, one CUDA graph per (batch, frames) bucket.

On the CPU the bucketing runs eagerly: padding rows never change the real rows' outputs, frame
padding changes only what batching with longer utterances changes, bad input is refused before any
copy. On a GPU (marked `gpu`): a replay equals eager on the same padded batch, and one graph serves
every batch of its bucket."""
import pytest
import torch

from zipformer_fast.asr.graphed_encoder import GraphedEncoder
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.config import ZipformerConfig


def _model(device="cpu"):
    torch.manual_seed(0)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=False).to(device).eval()


def _batch(B, T, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(T - 20, T + 1, (B,), generator=g)
    lens[0] = T
    return torch.randn(B, T, 80, generator=g).to(device), lens.to(device)


def test_buckets_round_the_batch_to_a_power_of_two_and_the_frames_to_the_step():
    enc = GraphedEncoder(_model(), frame_step=100, max_batch=16)
    assert enc.bucket(1, 1) == (1, 100)
    assert enc.bucket(3, 100) == (4, 100)
    assert enc.bucket(5, 101) == (8, 200)
    assert enc.bucket(16, 250) == (16, 300)
    assert enc.bucket(12, 250) == (16, 300)
    assert enc.bucket(20, 250) == (20, 300)  # above max_batch: the batch as it is


def test_padding_rows_do_not_change_the_real_rows():
    model = _model()
    x, lens = _batch(3, 90)
    with torch.no_grad():
        want, want_lens = model.encode(x, lens)
    got, got_lens = GraphedEncoder(model, frame_step=1)(x, lens)  # 3 -> 4 rows, no frame padding
    assert got.shape == want.shape
    assert torch.equal(got_lens, want_lens)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_frame_padding_equals_batching_with_a_longer_utterance():
    """Bucketed to 200 frames, two utterances of 90 and 87 frames get what they get in an eager
    batch with a third utterance of 200 frames (zero-padded alike). Padding is not neutral for
    the longest utterance (its last downsampled frame pairs with padding, and every frame attends
    to it), which is icefall's behaviour in any padded batch."""
    model = _model()
    x, lens = _batch(2, 90, seed=1)
    longer = torch.randn(1, 200, 80, generator=torch.Generator().manual_seed(5))
    x3 = torch.zeros(3, 200, 80)
    x3[:2, :90] = x
    x3[2:] = longer
    with torch.no_grad():
        want, want_lens = model.encode(x3, torch.cat([lens, torch.tensor([200])]))
    got, got_lens = GraphedEncoder(model, frame_step=200)(x, lens)
    assert got.shape == (2,) + want.shape[1:]
    assert torch.equal(got_lens, want_lens[:2])
    for b in range(2):
        n = int(got_lens[b])
        torch.testing.assert_close(got[b, :n], want[b, :n], rtol=1e-5, atol=1e-5)


def test_bad_input_is_refused_before_any_copy():
    enc = GraphedEncoder(_model())
    x, lens = _batch(2, 60)
    with pytest.raises(ValueError, match="channels"):
        enc(x[..., :40], lens)
    with pytest.raises(ValueError, match="exceed"):
        enc(x, lens + 5)
    with pytest.raises(ValueError, match="eval mode"):
        GraphedEncoder(_model().train())


@pytest.mark.gpu
def test_cuda_graph_replays_equal_eager_and_one_graph_serves_a_bucket():
    model = _model("cuda")
    enc = GraphedEncoder(model, frame_step=100, max_batch=8)
    outs = []
    for seed, (B, T) in enumerate([(3, 150), (4, 180), (2, 90)]):
        x, lens = _batch(B, T, seed=seed, device="cuda")
        got, got_lens = enc(x, lens)
        Bb, Tb = enc.bucket(B, T)
        xp = torch.zeros(Bb, Tb, 80, device="cuda")
        xp[:B, :T] = x
        xp[B:, :T] = x[:1]
        lp = torch.cat([lens, lens[:1].expand(Bb - B)])
        with torch.no_grad():
            want, want_lens = model.encode(xp, lp)
        torch.testing.assert_close(got, want[:B], rtol=1e-5, atol=1e-5)
        assert torch.equal(got_lens, want_lens[:B])
        outs.append(got)
    assert sorted(enc.graphs) == [(2, 100), (4, 200)]  # (3, 150) and (4, 180) share one graph
