"""sherpa-onnx loads our exported folders and decodes wav files to the token sequences our PyTorch
greedy search gives on the same audio, offline and streaming.

sherpa-onnx computes its fbank from the wav with kaldi-native-fbank; PyTorch gets the same features
from kaldi-native-fbank here (identical features, so the token sequences must be identical). Our
recipes' lhotse Fbank differs from it by up to ~1e-3 (log-mel, mean ~5e-6) with the same frame
count; on this deliberately tie-prone model that flips some later tokens, so the lhotse comparison
checks the features, not the token sequences.

The model is the tiny XS transducer with random weights, made to emit: its projected encoder frames
are standardised over the test audio and the joiner's output layer scaled, so that the argmax
changes from frame to frame among many tokens; with near-ties everywhere, identical token
sequences are a strong equivalence check. Both searches skip <unk>, as sherpa-onnx does.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("lhotse", reason="the 'data' extra (lhotse) is not installed")
pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")
pytest.importorskip("sherpa_onnx", reason="the 'export' extra (sherpa-onnx) is not installed")

from recipes.synthetic.tones import make_tone_corpus  # noqa: E402
from zipformer_fast import ZipformerConfig, use_backend  # noqa: E402
from zipformer_fast.asr.model import AsrModel  # noqa: E402
from zipformer_fast.asr.search import decode  # noqa: E402
from zipformer_fast.asr import streaming_encoder as senc  # noqa: E402
from zipformer_fast.data.datamodule import load_split  # noqa: E402
from zipformer_fast.data.manifests import fbank_extractor  # noqa: E402
from zipformer_fast.data.tokenizer import Tokenizer  # noqa: E402
from zipformer_fast.export import sherpa  # noqa: E402
from zipformer_fast.export.onnx_files import ExportSpec, export_onnx  # noqa: E402
from zipformer_fast.export.streaming import configured  # noqa: E402
from zipformer_fast.export.verify import ort_greedy_search  # noqa: E402

CHUNK, LEFT = 16, 64
TAIL_SECONDS = 0.3  # zeros appended before input_finished(), as sherpa-onnx's examples do


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = make_tone_corpus(tmp_path_factory.mktemp("tones"), n_train=6, n_dev=1, n_test=12)
    cuts = sorted(load_split(d / "manifests", "test"), key=lambda c: c.id)
    return d, cuts


def emitting_model(vocab, cuts, causal):
    torch.manual_seed(0)
    extra = dict(causal=True, chunk_size=(CHUNK,), left_context_frames=(LEFT,)) if causal else {}
    cfg = ZipformerConfig.preset("XS", vocab_size=vocab, decoder_dim=64, joiner_dim=64, embed_channels=(8, 32, 64),
                                 **extra)
    model = AsrModel(cfg, vocab_size=vocab).eval()
    with torch.no_grad(), use_backend("reference"):
        frames = torch.cat([model.forward_encoder(f[None], torch.tensor([f.shape[0]]))[0][0]
                            for f in (torch.from_numpy(c.load_features()) for c in cuts)])
        proj = model.joiner.encoder_proj
        p = proj(frames)
        mu, sd = p.mean(0), p.std(0).clamp_min(1e-6)
        proj.weight.div_(sd[:, None]).mul_(2.0)
        proj.bias.sub_(mu).div_(sd).mul_(2.0)
        out = model.joiner.output_linear
        out.weight.mul_(10.0)
        out.bias.zero_()
        out.bias[0] = 8.0
    return model


def knf_features(samples, sr):
    """The fbank sherpa-onnx computes (kaldi-native-fbank, its FeatureExtractorConfig defaults)."""
    knf = pytest.importorskip("kaldi_native_fbank", reason="kaldi-native-fbank (sherpa-onnx's fbank) not installed")
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = sr
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq, opts.mel_opts.high_freq = 20.0, -400.0
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(sr, samples.tolist())
    fb.input_finished()
    return torch.tensor(np.stack([fb.get_frame(i) for i in range(fb.num_frames_ready)]))


def pytorch_greedy(model, feats, unk_id):
    model.unk_id = unk_id
    with torch.no_grad(), use_backend("reference"):
        return [decode(model, *model.forward_encoder(f[None], torch.tensor([f.shape[0]])), method="greedy_search")[0]
                for f in feats]


def check_nontrivial(hyps, feats):
    emitted = sum(map(len, hyps))
    distinct = len({t for h in hyps for t in h})
    frames = sum(f.shape[0] // 4 for f in feats)
    assert distinct >= 8 and emitted >= 0.2 * frames, (distinct, emitted, frames)


def test_sherpa_onnx_offline_decodes_like_pytorch(corpus, tmp_path):
    d, cuts = corpus
    tok = Tokenizer(d / "lang" / "bpe.model")
    model = emitting_model(tok.vocab_size, cuts, causal=False)
    files = export_onnx(model, tmp_path, d / "lang" / "bpe.model", ExportSpec(kinds=("offline",), int8=False))
    wavs = [c.recording.sources[0].source for c in cuts]
    feats = [knf_features(*sherpa.read_wav(w)) for w in wavs]
    ours = pytorch_greedy(model, feats, tok.unk_id)
    check_nontrivial(ours, feats)
    # 1. identical features: onnxruntime greedy search over the exported graphs equals PyTorch exactly
    graphs = {k: v["fp32"] for k, v in files["offline"].items() if k != "tokens"}
    ort_hyps = [ort_greedy_search(graphs, f[None], torch.tensor([f.shape[0]]), 2, skip_ids=(0, tok.unk_id))[0]
                for f in feats]
    assert ort_hyps == ours
    # 2. sherpa-onnx from the wav files, greedy search
    rec = sherpa.recognizer(tmp_path / "offline", "offline", "greedy_search")
    theirs = sherpa.decode_wavs(rec, wavs, tmp_path / "offline" / "tokens.txt")["hyps"]
    same = sum(a == b for a, b in zip(ours, theirs))
    assert same >= 0.99 * len(cuts), [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]


def test_lhotse_fbank_matches_sherpa_onnx_fbank(corpus):
    d, cuts = corpus
    ext = fbank_extractor()
    for c in cuts:
        samples, sr = sherpa.read_wav(c.recording.sources[0].source)
        ours, theirs = torch.from_numpy(ext.extract(samples, sr)), knf_features(samples, sr)
        assert ours.shape == theirs.shape
        # Measured on these wavs: max 1.1e-3 (log-mel values up to ~15 in magnitude: float32 FFT and
        # log rounding of two implementations), mean ~5e-6. A different window, mel range or sample
        # scaling would differ by > 0.1.
        assert (ours - theirs).abs().max() < 2e-3 and (ours - theirs).abs().mean() < 2e-5


def streaming_greedy(model, feats, unk_id):
    """Chunk-by-chunk PyTorch greedy search over exactly the chunks sherpa-onnx's online recognizer
    runs: full windows of 2 * chunk + 13 frames every 2 * chunk frames, no partial last chunk, and a
    chunk only while MORE than its window is buffered (online-recognizer-transducer-impl.h IsReady:
    processed + T < frames ready, so a window that ends exactly at the last frame is not run)."""
    model.unk_id = unk_id
    T, hop = senc.chunk_feature_frames(CHUNK), 2 * CHUNK
    hyps = []
    with torch.no_grad(), use_backend("reference"), configured(model, CHUNK, LEFT):
        for f in feats:
            states = senc.get_init_states(model, 1)
            ys = [-1, 0]
            dec = model.joiner.decoder_proj(model.decoder(torch.tensor([ys[-2:]]), need_pad=False))[:, 0]
            for start in range(0, f.shape[0] - T, hop):
                enc, _, states = senc.streaming_forward(model, f[None, start:start + T], torch.tensor([T]), states)
                for e in model.joiner.encoder_proj(enc[0]):
                    k = int(model.joiner(e[None], dec, project_input=False)[0].argmax())
                    if k not in (0, unk_id):
                        ys.append(k)
                        dec = model.joiner.decoder_proj(model.decoder(torch.tensor([ys[-2:]]), need_pad=False))[:, 0]
            hyps.append(ys[2:])
    return hyps


def test_sherpa_onnx_streaming_decodes_like_pytorch(corpus, tmp_path):
    d, cuts = corpus
    tok = Tokenizer(d / "lang" / "bpe.model")
    model = emitting_model(tok.vocab_size, cuts, causal=True)
    export_onnx(model, tmp_path, d / "lang" / "bpe.model", ExportSpec(kinds=("streaming",), int8=False))
    wavs = [c.recording.sources[0].source for c in cuts]
    feats = []
    for w in wavs:
        samples, sr = sherpa.read_wav(w)
        feats.append(knf_features(np.concatenate([samples, np.zeros(int(TAIL_SECONDS * sr), dtype=np.float32)]), sr))
    ours = streaming_greedy(model, feats, tok.unk_id)
    check_nontrivial(ours, feats)
    rec = sherpa.recognizer(tmp_path / "streaming", "streaming", "greedy_search")
    theirs = sherpa.decode_wavs(rec, wavs, tmp_path / "streaming" / "tokens.txt", streaming=True)["hyps"]
    same = sum(a == b for a, b in zip(ours, theirs))
    diff = [(i, len(feats[i]), len(a), len(b), next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None),
             str(a), str(b)) for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert same >= 0.99 * len(cuts), str(diff)
