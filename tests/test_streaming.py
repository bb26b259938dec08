"""Streaming API: state layout, real streaming against simulated streaming, search carried across
chunks, streams joining and leaving, the fused backend, and clear errors for bad input.

The model is the causal XS model of golden_XS_streaming.pt (icefall weights, randomly perturbed so
that every path matters), configured here with other chunk sizes and left contexts than the golden
run's (a model's weights do not depend on them).
"""
import pytest
import torch

from conftest import reference_file
from golden_check import rel_err
from zipformer_fast import use_backend
from zipformer_fast.asr import streaming as streaming_mod
from zipformer_fast.asr import streaming_encoder as senc
from zipformer_fast.asr.model import AsrModel
from zipformer_fast.asr.search import greedy_search_batch, modified_beam_search
from zipformer_fast.asr.streaming import StreamingRecognizer, recognize
from zipformer_fast.config import ZipformerConfig

CHUNKS = (16, 32)
LEFTS = (32, 64, 128)


@pytest.fixture(autouse=True)
def reference_one_thread():
    # Chunk-sized ops are tiny: one thread avoids the synchronisation cost on a loaded 2-core machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with use_backend("reference"):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def golden_weights():
    return torch.load(reference_file("golden_XS_streaming.pt"), weights_only=True)["state_dict"]


def causal_model(weights, chunk_size=CHUNKS, left_context_frames=LEFTS):
    config = ZipformerConfig.preset("XS", causal=True, chunk_size=chunk_size, left_context_frames=left_context_frames)
    model = AsrModel(config, vocab_size=64, use_transducer=True, use_ctc=True)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def utterances(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 80, generator=g) for n in lengths]


def stream_with_records(rec, feats, monkeypatch):
    """Stream all utterances together; returns ({stream id: [(encoder_out row, length)] per chunk}, streams)."""
    per_stream = {}
    real = senc.streaming_forward

    def recording(model, features, feature_lens, states):
        out, lens, new = real(model, features, feature_lens, states)
        recording.batch.append((out, lens))
        return out, lens, new

    recording.batch = []
    monkeypatch.setattr(streaming_mod.senc, "streaming_forward", recording)
    streams = [rec.create_stream(i) for i in range(len(feats))]
    for s, f in zip(streams, feats):
        s.accept_features(f)
        s.input_finished()
    while any(s.ready for s in streams):
        ids = [s.id for s in streams if s.ready]
        rec.step(streams)
        out, lens = recording.batch[-1]
        for b, i in enumerate(ids):
            per_stream.setdefault(i, []).append((out[b], int(lens[b])))
    return per_stream, streams


# ----------------------------------------------------------------------------------------- layout
def test_state_shapes_follow_icefall(golden_weights):
    model = causal_model(golden_weights)
    model.encoder.configure_streaming(32, 128)
    states = model.get_init_states(batch_size=3)
    cfg = model.config
    assert len(states) == 6 * sum(cfg.num_encoder_layers) + 2
    for i in range(6):  # one layer per stack in XS
        L = 128 // cfg.downsampling_factor[i]
        D, H = cfg.encoder_dim[i], cfg.num_heads[i]
        key, nonlin, val1, val2, conv1, conv2 = states[6 * i:6 * i + 6]
        assert key.shape == (L, 3, H * cfg.query_head_dim[i])
        assert nonlin.shape == (1, 3, L, 3 * D // 4)
        assert val1.shape == val2.shape == (L, 3, H * cfg.value_head_dim[i])
        assert conv1.shape == conv2.shape == (3, D, cfg.cnn_module_kernel[i] // 2)
    assert states[-2].shape == (3, 128, 3, 19)  # ConvNeXt left pad, 80-dim features
    assert states[-1].dtype == torch.int32 and states[-1].tolist() == [0, 0, 0]
    assert all(float(s.abs().sum()) == 0 for s in states)


def test_stack_and_unstack_are_inverse(golden_weights):
    model = causal_model(golden_weights)
    model.encoder.configure_streaming(16, 64)
    per_stream = []
    for b in range(3):
        states = model.get_init_states(1)
        per_stream.append([s + b + 0.5 * torch.arange(s.numel()).reshape(s.shape).to(s.dtype) for s in states])
    stacked = senc.stack_states(per_stream)
    assert stacked[0].shape[1] == 3 and stacked[4].shape[0] == 3 and stacked[-2].shape[0] == 3
    for ours, theirs in zip(senc.unstack_states(stacked), per_stream):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


# ----------------------------------------------------------------------- real vs simulated streaming
@pytest.mark.parametrize("chunk_size,left", [(16, 32), (32, 128)])
def test_real_streaming_equals_simulated_except_the_last_chunk(golden_weights, monkeypatch, chunk_size, left):
    """Chunk by chunk with cached states = the whole utterance with the chunk mask, frame for frame,
    except in the chunk that holds the utterance's last 3 frames at 50 Hz: there the full forward's
    ConvNeXt pads with zeros past the end while the stream sees the Conv-Embed output of its LOG_EPS
    tail. Covers the first chunks, where the left context is not yet filled (masked)."""
    model = causal_model(golden_weights)
    model.encoder.configure_streaming(chunk_size, left)
    feats = utterances([420, 250], seed=1)  # >= 6 chunks: the left context fills, then slides
    lens = torch.tensor([f.shape[0] for f in feats])
    padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=senc.LOG_EPS)
    with torch.no_grad():
        simulated, sim_lens = model.forward_encoder(padded, lens)
    rec = StreamingRecognizer(model, chunk_size, left)
    per_stream, _ = stream_with_records(rec, feats, monkeypatch)
    for b, f in enumerate(feats):
        real = torch.cat([out for out, _ in per_stream[b]])
        t50 = (f.shape[0] - 7) // 2
        exact = ((t50 - 3) // chunk_size) * chunk_size // 2
        assert exact >= 3 * chunk_size // 2  # several whole chunks compared
        err = rel_err(real[:exact], simulated[b, :exact])
        assert err <= 1e-5, f"stream {b}: {err:.2e} over {exact} frames"
        assert real.shape[0] >= int(sim_lens[b])  # the tail padding yields extra frames


def test_batch_companions_do_not_change_a_stream(golden_weights, monkeypatch):
    """A stream's outputs do not depend on which streams share its batches, or when they join: a
    stream decoded alone equals it decoded with others that start later (icefall's padding rule
    can change only the final, padded chunk)."""
    model = causal_model(golden_weights)
    feats = utterances([260, 150, 300], seed=2)
    rec = StreamingRecognizer(model, 16, 64)
    alone, _ = stream_with_records(rec, feats[:1], monkeypatch)

    streams = [rec.create_stream(i) for i in range(3)]
    streams[0].accept_features(feats[0])
    streams[0].input_finished()
    records = {}
    real = senc.streaming_forward

    def recording(model_, features, feature_lens, states):
        out, lens, new = real(model_, features, feature_lens, states)
        recording.out = out
        return out, lens, new

    monkeypatch.setattr(streaming_mod.senc, "streaming_forward", recording)
    step = 0
    while any(s.ready for s in streams) or step < 4:
        if step == 2:  # stream 1 joins with its whole input, stream 2 receives frames piecemeal
            streams[1].accept_features(feats[1])
            streams[1].input_finished()
        if 2 <= step and not streams[2].finished:
            streams[2].accept_features(feats[2][(step - 2) * 50:(step - 1) * 50])
            if (step - 1) * 50 >= feats[2].shape[0]:
                streams[2].input_finished()
        ids = [s.id for s in streams if s.ready]
        rec.step(streams)
        if ids:
            for b, i in enumerate(ids):
                records.setdefault(i, []).append(recording.out[b])
        step += 1
    assert all(s.done for s in streams)
    together = records[0]
    assert len(together) == len(alone[0])
    for k, ((a, _), b) in enumerate(zip(alone[0][:-1], together[:-1])):
        assert rel_err(b, a) <= 1e-5, f"chunk {k}"  # batch size changes only the BLAS summation order


# ------------------------------------------------------------------------------- search across chunks
@pytest.mark.parametrize("method", ["greedy_search", "modified_beam_search"])
def test_search_carried_across_chunks_equals_search_over_all_frames(golden_weights, monkeypatch, method):
    """Decoding chunk after chunk (hypotheses and decoder context carried in the Stream) gives the
    same tokens as the offline search over the concatenated chunk outputs (every frame, as
    icefall's streaming search decodes)."""
    model = causal_model(golden_weights)
    feats = utterances([300, 217], seed=3)
    rec = StreamingRecognizer(model, 16, 64, decoding_method=method, beam=3)
    per_stream, streams = stream_with_records(rec, feats, monkeypatch)
    search = greedy_search_batch if method == "greedy_search" else (
        lambda m, e, n: modified_beam_search(m, e, n, beam=3))
    for s in streams:
        enc = torch.cat([out for out, _ in per_stream[s.id]]).unsqueeze(0)
        offline = search(model, enc, torch.tensor([enc.shape[1]]))[0]
        assert s.tokens == offline
    assert any(len(s.tokens) > 0 for s in streams)  # the perturbed model emits tokens


def test_recognize_helper_and_beam_one_equals_greedy(golden_weights):
    """Modified beam search with one active path is greedy search. (Both with the same batches:
    icefall's padding rule lets the last chunk's outputs depend on the batch.)"""
    model = causal_model(golden_weights)
    feats = utterances([120, 250, 90], seed=4)
    greedy = recognize(model, feats, 32, 64, "greedy_search", max_batch=2)
    beam1 = recognize(model, feats, 32, 64, "modified_beam_search", beam=1, max_batch=2)
    assert greedy == beam1 and all(len(t) > 0 for t in greedy)


# ------------------------------------------------------------------------------------ fused backend
def test_fused_backend_streams_like_the_reference(golden_weights, monkeypatch):
    """Under use_backend("triton") (Triton interpreter on CPU) a chunk runs the fused kernels where
    they apply (feed-forward GEMM + SwooshL, SwooshR + linear, BiasNorm + bypass, bypass,
    downsampling); the attention of a chunk against cached keys takes the reference
    (ops/streaming_attention.py says why). Checked on the first two stacks (one at 50 Hz, one
    downsampled), whose outputs and new states equal the reference backend's; the spy shows the
    fused path really ran (no silent fallback). The interpreter is slow, hence the small case."""
    from zipformer_fast.ops import activation_linear
    calls = []
    fused = activation_linear._linear_act_fwd

    def spy(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(activation_linear, "_linear_act_fwd", spy)
    model = causal_model(golden_weights)
    model.encoder.configure_streaming(16, 32)
    g = torch.Generator().manual_seed(5)
    states = [torch.randn(s.shape, generator=g) for s in model.encoder.get_init_states(2)]
    x = torch.randn(16, 2, model.config.encoder_dim[0], generator=g)
    mask = torch.zeros(2, 32 + 16, dtype=torch.bool)
    mask[1, :20] = True  # stream 1: left context partly unfilled
    mask[1, -3:] = True  # and a padded chunk end
    results = {}
    for backend in ("reference", "triton"):
        with use_backend(backend), torch.no_grad():
            out0, st0 = model.encoder.encoders[0].streaming_forward(x, states[:6], 32, mask)
            y = torch.cat((out0, torch.zeros(16, 2, model.config.encoder_dim[1] - out0.shape[2])), dim=2)
            out1, st1 = model.encoder.encoders[1].streaming_forward(y, states[6:12], 16, mask[:, ::2])
        results[backend] = [out0, out1] + st0 + st1
        if backend == "reference":
            assert not calls
    assert calls  # the feed-forward modules ran the GEMM + SwooshL kernel
    for k, (a, b) in enumerate(zip(results["triton"], results["reference"])):
        assert rel_err(a, b) <= 1e-5, f"tensor {k}"


# -------------------------------------------------------------------------------------- bad input
def test_untrained_chunk_or_left_context_is_refused(golden_weights):
    model = causal_model(golden_weights)
    with pytest.raises(ValueError, match="trained with chunk sizes"):
        StreamingRecognizer(model, 64, 64)
    with pytest.raises(ValueError, match="trained with"):
        model.encoder.configure_streaming(16, 256)
    with pytest.raises(ValueError, match="positive multiple of 8"):
        model.encoder.configure_streaming(12, 64, allow_untrained=True)
    with pytest.raises(ValueError, match="finite left context"):
        model.encoder.configure_streaming(16, -1, allow_untrained=True)
    model.encoder.configure_streaming(64, 256, allow_untrained=True)  # allowed when asked for


def test_non_causal_model_cannot_stream(golden):
    model = AsrModel(ZipformerConfig.preset("XS"), vocab_size=64, use_transducer=True, use_ctc=True).eval()
    with pytest.raises(ValueError, match="causal"):
        StreamingRecognizer(model, 16, 64)
    with pytest.raises(ValueError, match="causal"):
        model.get_init_states(1)


def test_states_of_another_configuration_or_batch_size_are_refused(golden_weights):
    model = causal_model(golden_weights)
    model.encoder.configure_streaming(16, 64)
    feats = torch.randn(2, senc.chunk_feature_frames(16), 80)
    lens = torch.tensor([feats.shape[1]] * 2)
    with pytest.raises(ValueError, match=r"state 0 \(layer 0, cached_key\).*expected \(64, 2, 32\)"):
        model.streaming_forward(feats, lens, model.get_init_states(1))  # batch size 1 for 2 streams
    other = model.get_init_states(2)
    model.encoder.configure_streaming(16, 128)  # states were made for left context 64
    with pytest.raises(ValueError, match="another model configuration"):
        model.streaming_forward(feats, lens, other)
    small = causal_model(golden_weights)
    small.encoder.configure_streaming(16, 128)
    with pytest.raises(ValueError, match="38 states|states"):
        model.streaming_forward(feats, lens, small.get_init_states(2)[:-3])
    with pytest.raises(ValueError, match="different numbers of states"):
        senc.stack_states([model.get_init_states(1), model.get_init_states(1)[:-1]])


def test_streams_of_another_recognizer_are_refused(golden_weights):
    model = causal_model(golden_weights)
    rec_a, rec_b = StreamingRecognizer(model, 16, 64), StreamingRecognizer(model, 32, 128)
    s = rec_a.create_stream()
    s.accept_features(torch.randn(100, 80))
    with pytest.raises(ValueError, match="this recognizer"):
        rec_b.step([s])


def test_wrong_features_are_refused(golden_weights):
    model = causal_model(golden_weights)
    rec = StreamingRecognizer(model, 16, 64)
    s = rec.create_stream("a")
    with pytest.raises(ValueError, match="81 channels; the model expects 80"):
        s.accept_features(torch.randn(10, 81))
    with pytest.raises(ValueError, match="frames, 80"):
        s.accept_features(torch.randn(1, 10, 80))
    with pytest.raises(ValueError, match="NaN or Inf"):
        s.accept_features(torch.full((5, 80), float("nan")))
    model.encoder.configure_streaming(16, 64)
    with pytest.raises(ValueError, match="takes \\(B, 45, feature_dim\\)"):
        model.streaming_forward(torch.randn(1, 40, 80), torch.tensor([40]), model.get_init_states(1))
    with pytest.raises(ValueError, match="reduces to 9 frequencies; this model has 19"):
        model.encoder_embed.streaming_forward(torch.randn(1, 45, 40), torch.tensor([45]),
                                              model.encoder_embed.get_init_states(1))


def test_a_stream_fed_after_it_ended_is_refused(golden_weights):
    model = causal_model(golden_weights)
    rec = StreamingRecognizer(model, 16, 64)
    s = rec.create_stream("a")
    s.accept_features(torch.randn(60, 80))
    s.input_finished()
    with pytest.raises(RuntimeError, match="after input_finished"):
        s.accept_features(torch.randn(10, 80))
    with pytest.raises(RuntimeError, match="called twice"):
        s.input_finished()
    rec.decode([s])
    assert s.done and not s.ready
    assert rec.step([s]) == []  # a done stream is skipped, not run again
