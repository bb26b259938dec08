"""Real streaming reproduces icefall's own streaming run of a causal XS model (golden_XS_streaming.pt:
two streams of 331 and 250 frames, chunk 16, left context 64, driven as icefall's
streaming_decode.py; tests/data/README.md describes it).

StreamingRecognizer drives the streams exactly as icefall does, so the test feeds it the two
utterances and records every encoder call: each step's batch composition, padded features,
lengths, encoder_out and encoder_out_lens must equal icefall's, and each stream's final states too.

Tolerances, relative error ||ours - icefall|| / ||icefall||: encoder_out <= 1e-5 (measured up to
1.7e-6, growing over the 12 steps); final states <= 2e-5: the last stack's convolution caches come
out at 9.7e-6, and golden's own float32 round-off there is 7.1e-6 (icefall's values against our
model run in float64), so 1e-5 would test the BLAS summation order, not the model. Lengths and
processed_lens are exact (including icefall's negative length for a chunk made only of padding).
"""
import pytest
import torch

from conftest import reference_file
from golden_check import rel_err
from zipformer_fast import use_backend
from zipformer_fast.asr import streaming as streaming_mod
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.asr.streaming import StreamingRecognizer
from zipformer_fast.asr.streaming_encoder import LOG_EPS
from zipformer_fast.config import ZipformerConfig

RTOL = 1e-5
STATE_RTOL = 2e-5


@pytest.fixture(scope="module")
def golden_streaming():
    return torch.load(reference_file("golden_XS_streaming.pt"), weights_only=True)


def build_golden_model(g):
    config = ZipformerConfig.preset("XS", causal=True, chunk_size=(g["chunk_size"],),
                                    left_context_frames=(g["left_context_frames"],))
    model = AsrModel(config, vocab_size=64, use_transducer=True, use_ctc=True)
    model.load_state_dict(g["state_dict"], strict=True)
    return model.eval()


def run_recorded(model, g, monkeypatch):
    """Stream golden's two utterances; returns (per-step records, streams)."""
    records = []
    real = streaming_mod.senc.streaming_forward

    def recording(model_, features, feature_lens, states):
        out, lens, new_states = real(model_, features, feature_lens, states)
        records.append(dict(features=features, feature_lens=feature_lens, encoder_out=out, encoder_out_lens=lens))
        return out, lens, new_states

    monkeypatch.setattr(streaming_mod.senc, "streaming_forward", recording)
    rec = StreamingRecognizer(model, g["chunk_size"], g["left_context_frames"])
    streams = [rec.create_stream(i) for i in range(len(g["stream_features"]))]
    for s, f in zip(streams, g["stream_features"]):
        s.accept_features(f)
        s.input_finished()
    ids = []
    while any(s.ready for s in streams):
        ids.append([s.id for s in streams if s.ready])
        rec.step(streams)
    for r, i in zip(records, ids):
        r["ids"] = i
    return records, streams


@pytest.fixture(autouse=True)
def one_thread():
    # Chunk-sized ops are tiny: on a loaded 2-core machine, two threads' synchronisation made the
    # run 3x slower than one thread.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_real_streaming_reproduces_icefall_step_by_step(golden_streaming, monkeypatch):
    g = golden_streaming
    with use_backend("reference"):
        records, streams = run_recorded(build_golden_model(g), g, monkeypatch)
    assert len(records) == len(g["steps"])
    for k, (ours, theirs) in enumerate(zip(records, g["steps"])):
        assert ours["ids"] == theirs["ids"], f"step {k}: streams in the batch"
        assert torch.equal(ours["feature_lens"], theirs["feature_lens"]), f"step {k}: feature_lens"
        assert torch.equal(ours["features"], theirs["features"]), f"step {k}: padded features"
        assert torch.equal(ours["encoder_out_lens"], theirs["encoder_out_lens"]), f"step {k}: encoder_out_lens"
        err = rel_err(ours["encoder_out"], theirs["encoder_out"])
        assert err <= RTOL, f"step {k}: encoder_out relative error {err:.2e}"
    for s, theirs in zip(streams, g["final_states"]):
        assert s.done
        assert len(s.states) == len(theirs) == 6 * 6 + 2
        for j, (a, b) in enumerate(zip(s.states, theirs)):
            assert a.shape == b.shape, f"stream {s.id} state {j}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert torch.equal(s.states[-1], theirs[-1]), f"stream {s.id}: processed_lens"
        for j, (a, b) in enumerate(zip(s.states[:-1], theirs[:-1])):
            err = rel_err(a, b)
            assert err <= STATE_RTOL, f"stream {s.id} state {j}: relative error {err:.2e}"


def test_stream_outputs_concatenate_to_icefalls(golden_streaming, monkeypatch):
    """Each stream's outputs, chunk after chunk, equal icefall's stream_outputs. Those were gathered
    as encoder_out[b, :length] per step, so the final chunk's negative length (-2: a chunk of
    padding only) kept all but its last 2 frames; the same slicing here."""
    g = golden_streaming
    with use_backend("reference"):
        records, streams = run_recorded(build_golden_model(g), g, monkeypatch)
    for s, theirs in zip(streams, g["stream_outputs"]):
        pieces = []
        for r in records:
            if s.id in r["ids"]:
                b = r["ids"].index(s.id)
                pieces.append(r["encoder_out"][b, :int(r["encoder_out_lens"][b])])
        ours = torch.cat(pieces)
        assert ours.shape == theirs.shape
        assert rel_err(ours, theirs) <= RTOL


def test_simulated_streaming_reproduces_icefall(golden_streaming):
    """The full forward with the same chunk mask (simulated streaming) equals icefall's (batch padded
    with LOG_EPS, as icefall's data loader pads fbank)."""
    g = golden_streaming
    model = build_golden_model(g)
    feats = torch.nn.utils.rnn.pad_sequence(g["stream_features"], batch_first=True, padding_value=LOG_EPS)
    lens = torch.tensor([f.shape[0] for f in g["stream_features"]])
    with use_backend("reference"), torch.no_grad():
        out, out_lens = model.forward_encoder(feats, lens)
    assert torch.equal(out_lens, g["simulated_lens"])
    mask = (torch.arange(out.shape[1])[None, :] < out_lens[:, None]).unsqueeze(-1)
    assert rel_err(out * mask, g["simulated_out"] * mask) <= RTOL


def test_icefall_real_and_simulated_agree_except_the_last_chunk(golden_streaming):
    """In icefall's own run, real and simulated streaming agree until the chunk that holds the last
    3 frames at 50 Hz (there the full forward's ConvNeXt sees zero padding past the end, the stream
    sees Conv-Embed outputs of the LOG_EPS tail), which is what test_streaming checks for ours."""
    g = golden_streaming
    half = g["chunk_size"] // 2
    for b, f in enumerate(g["stream_features"]):
        n = exact_output_frames(f.shape[0], g["chunk_size"])
        assert 0 < n < int(g["simulated_lens"][b])
        assert rel_err(g["stream_outputs"][b][:n], g["simulated_out"][b, :n]) <= 1e-6
        # The next chunk does differ: the bound is tight.
        assert rel_err(g["stream_outputs"][b][n:n + half], g["simulated_out"][b, n:n + half]) > 1e-3


def exact_output_frames(num_feature_frames: int, chunk_size: int) -> int:
    """Output frames before the chunk holding the utterance's last 3 frames at 50 Hz."""
    t50 = (num_feature_frames - 7) // 2
    return ((t50 - 3) // chunk_size) * chunk_size // 2
