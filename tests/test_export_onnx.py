"""ONNX export (zipformer_fast.export): every graph equals PyTorch under onnxruntime, the files have
the names, dtypes, dynamic axes and metadata sherpa-onnx reads, and bad input fails before any file
is written. Models are the tiny XS configuration with random weights (seconds to export)."""
import json
import random

import pytest
import torch

onnx = pytest.importorskip("onnx", reason="the 'export' extra (onnx) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the 'export' extra (onnxruntime) is not installed")
pytest.importorskip("sentencepiece", reason="tokens.txt needs sentencepiece")

from zipformer_fast import ZipformerConfig  # noqa: E402
from zipformer_fast.asr.model import AsrModel  # noqa: E402
from zipformer_fast.export.__main__ import main as export_main  # noqa: E402
from zipformer_fast.export.onnx_files import ExportSpec, export_onnx, read_metadata  # noqa: E402
from zipformer_fast.export.streaming import state_names  # noqa: E402
from zipformer_fast.export.verify import compare_ctc, compare_offline, compare_streaming, session  # noqa: E402

TINY = dict(decoder_dim=64, joiner_dim=64, embed_channels=(8, 32, 64))
ENCODER_TOL = 1e-4   # relative, the task's bound for the encoder
HEAD_TOL = 1e-5      # decoder / joiner: a few float32 ulps


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    from zipformer_fast.data.tokenizer import Tokenizer, train_bpe
    words = ["red", "green", "blue", "one", "two", "three", "cat", "dog", "sun", "moon", "zipformer"]
    rng = random.Random(0)
    texts = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(200)]
    path = train_bpe(texts, tmp_path_factory.mktemp("lang") / "bpe", 40)
    return path, Tokenizer(path).vocab_size


def tiny_model(vocab, causal=False, seed=0):
    torch.manual_seed(seed)
    extra = dict(causal=True, chunk_size=(16, 32), left_context_frames=(64, 128)) if causal else {}
    cfg = ZipformerConfig.preset("XS", vocab_size=vocab, **TINY, **extra)
    return AsrModel(cfg, vocab_size=vocab, use_ctc=True).eval()


@pytest.fixture(scope="module")
def offline(bpe, tmp_path_factory):
    """The non-causal model exported through the CLI from an icefall-format checkpoint (a bare state
    dict), with its architecture as a JSON config: offline transducer + CTC, fp32, int8 and fp16."""
    path, vocab = bpe
    model = tiny_model(vocab)
    d = tmp_path_factory.mktemp("offline")
    torch.save({"model": model.state_dict()}, d / "epoch-1.pt")
    (d / "tiny.json").write_text(json.dumps({"preset": "XS", **TINY, "embed_channels": list(TINY["embed_channels"])}))
    report = export_main(["onnx", "--icefall-checkpoint", str(d / "epoch-1.pt"), "--model-config", str(d / "tiny.json"),
                          "--use-ctc", "1", "--bpe-model", str(path), "--out-dir", str(d / "out"), "--fp16", "1"])
    return model, d / "out", report


@pytest.fixture(scope="module")
def streaming(bpe, tmp_path_factory):
    path, vocab = bpe
    model = tiny_model(vocab, causal=True, seed=1)
    out = tmp_path_factory.mktemp("streaming")
    files = export_onnx(model, out, path, ExportSpec(kinds=("streaming", "offline"), int8=False, chunk_size=16,
                                                     left_context_frames=64))
    return model, out, files


def graphs(folder, precision="fp32"):
    suffix = ".onnx" if precision == "fp32" else f".{precision}.onnx"
    return {g: folder / f"{g}{suffix}" for g in ("encoder", "decoder", "joiner")}


def features(batch_lens, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(batch_lens), max(batch_lens), 80, generator=g), torch.tensor(batch_lens)


# ------------------------------------------------------------------------------ equivalence
@pytest.mark.parametrize("lens", [[257], [412, 300, 97], [23, 23]])
def test_offline_transducer_graphs_equal_pytorch(offline, lens):
    model, out, _ = offline
    x, x_lens = features(lens)  # lengths other than the traced 300, with padding, batch 1 and 3
    err = compare_offline(model, graphs(out / "offline"), x, x_lens)
    assert err["encoder_out_lens"] == 0.0
    assert err["encoder_out"] <= ENCODER_TOL, err
    assert err["decoder_out"] <= HEAD_TOL and err["logit"] <= HEAD_TOL, err


def test_ctc_graph_equals_pytorch(offline):
    model, out, _ = offline
    x, x_lens = features([333, 150])
    err = compare_ctc(model, out / "ctc" / "model.onnx", x, x_lens)
    assert err["log_probs_len"] == 0.0 and err["log_probs"] <= ENCODER_TOL, err


def test_cli_reports_its_own_check(offline):
    _, _, report = offline
    errs = report["relative_error"]
    assert set(errs) == {"offline", "ctc"}
    assert errs["offline"]["encoder_out"] <= ENCODER_TOL and errs["ctc"]["log_probs"] <= ENCODER_TOL


def test_fp16_and_int8_variants_run_and_keep_metadata(offline):
    model, out, _ = offline
    x, x_lens = features([260, 201])
    fp16 = compare_offline(model, graphs(out / "offline", "fp16"), x, x_lens)
    assert fp16["encoder_out"] < 1e-2 and fp16["logit"] < 1e-2, fp16
    # int8 weights on random (untrained) weights move outputs a lot; the check is that the graphs run
    # with the same contract and metadata, and stay correlated with fp32.
    int8 = compare_offline(model, graphs(out / "offline", "int8"), x, x_lens)
    assert int8["encoder_out_lens"] == 0.0 and int8["encoder_out"] < 0.5, int8
    for name in ("encoder", "decoder", "joiner"):
        assert read_metadata(out / "offline" / f"{name}.int8.onnx").items() >= \
            read_metadata(out / "offline" / f"{name}.onnx").items()


def test_streaming_encoder_equals_pytorch_chunk_after_chunk(streaming):
    model, out, files = streaming
    x, _ = features([2 * 16 * 6 + 13] * 2, seed=3)  # six chunks of 16 frames (32 feature frames), batch 2
    err = compare_streaming(model, files["streaming"]["encoder"]["fp32"], x, 16, 64)
    assert err["chunks"] == 6
    assert err["encoder_out"] <= ENCODER_TOL and err["states"] <= ENCODER_TOL, err
    assert err["processed_lens"] == 0.0


def test_causal_model_offline_graph_uses_the_exported_chunking(streaming):
    model, out, _ = streaming
    meta = read_metadata(out / "offline" / "encoder.onnx")
    assert (meta["chunk_size"], meta["left_context_frames"]) == ("16", "64")
    x, x_lens = features([300, 211], seed=4)
    err = compare_offline(model, graphs(out / "offline"), x, x_lens)
    assert err["encoder_out"] <= ENCODER_TOL, err
    assert model.encoder.chunk_size == [16, 32]  # the model's trained chunk sizes are restored


# ----------------------------------------------------------------------------- the contract
def io(path):
    s = session(path)
    return ([(i.name, i.type, i.shape) for i in s.get_inputs()], [(o.name, o.type, o.shape) for o in s.get_outputs()])


def test_offline_files_have_sherpa_onnx_names_types_axes_and_metadata(offline, bpe):
    _, out, _ = offline
    _, vocab = bpe
    ins, outs = io(out / "offline" / "encoder.onnx")
    assert [(n, t) for n, t, _ in ins] == [("x", "tensor(float)"), ("x_lens", "tensor(int64)")]
    assert [n for n, _, _ in outs] == ["encoder_out", "encoder_out_lens"]
    assert all(isinstance(d, str) for d in ins[0][2][:2]), ins  # dynamic N and T
    assert ins[0][2][2] == 80 and outs[0][2][2] == 64
    ins, outs = io(out / "offline" / "decoder.onnx")
    assert ins == [("y", "tensor(int64)", [ins[0][2][0], 2])] and isinstance(ins[0][2][0], str)
    assert [n for n, _, _ in outs] == ["decoder_out"]
    ins, outs = io(out / "offline" / "joiner.onnx")
    assert [n for n, _, _ in ins] == ["encoder_out", "decoder_out"] and outs[0][0] == "logit"
    assert outs[0][2][1] == vocab
    ins, outs = io(out / "ctc" / "model.onnx")
    assert [n for n, _, _ in ins] == ["x", "x_lens"] and [n for n, _, _ in outs] == ["log_probs", "log_probs_len"]
    assert read_metadata(out / "offline" / "encoder.onnx")["model_type"] == "zipformer2"
    assert read_metadata(out / "ctc" / "model.onnx")["model_type"] == "zipformer2_ctc"
    dec = read_metadata(out / "offline" / "decoder.onnx")
    assert (dec["vocab_size"], dec["context_size"]) == (str(vocab), "2")
    assert read_metadata(out / "offline" / "joiner.onnx")["joiner_dim"] == "64"
    for f in (out / "offline" / "encoder.onnx", out / "ctc" / "model.onnx"):
        assert max(op.version for op in onnx.load(str(f)).opset_import if op.domain in ("", "ai.onnx")) >= 13


def test_tokens_txt_lists_every_piece_with_blank_first(offline, bpe):
    path, vocab = bpe
    _, out, _ = offline
    from zipformer_fast.data.tokenizer import Tokenizer
    sp = Tokenizer(path).sp
    for kind in ("offline", "ctc"):
        lines = (out / kind / "tokens.txt").read_text(encoding="utf-8").splitlines()
        assert lines[0] == "<blk> 0" and len(lines) == vocab
        assert all(line == f"{sp.id_to_piece(i)} {i}" for i, line in enumerate(lines))


def test_streaming_encoder_names_states_in_icefall_order_with_metadata(streaming):
    model, out, _ = streaming
    ins, outs = io(out / "streaming" / "encoder.onnx")
    names = state_names(model)
    assert [n for n, _, _ in ins] == ["x"] + names
    assert [n for n, _, _ in outs] == ["encoder_out"] + [f"new_{n}" for n in names]
    assert names[:6] == [f"{s}_0" for s in ("cached_key", "cached_nonlin_attn", "cached_val1", "cached_val2",
                                            "cached_conv1", "cached_conv2")]
    assert len(names) == 6 * 6 + 2 and names[-2:] == ["embed_states", "processed_lens"]
    assert dict((n, t) for n, t, _ in ins)["processed_lens"] == "tensor(int64)"
    # sherpa-onnx makes this state with 128 channels whatever the model's Conv-Embed width (64 here)
    assert dict((n, s) for n, _, s in ins)["embed_states"][1:] == [128, 3, 19]
    assert ins[0][2][1:] == [2 * 16 + 13, 80]
    meta = read_metadata(out / "streaming" / "encoder.onnx")
    cfg = model.config
    assert meta["model_type"] == "zipformer2"
    assert (meta["decode_chunk_len"], meta["T"]) == ("32", "45")
    assert meta["num_encoder_layers"] == ",".join(map(str, cfg.num_encoder_layers))
    assert meta["encoder_dims"] == ",".join(map(str, cfg.encoder_dim))
    assert meta["cnn_module_kernels"] == ",".join(map(str, cfg.cnn_module_kernel))
    assert meta["left_context_len"] == ",".join(str(64 // d) for d in cfg.downsampling_factor)
    for key, field in (("query_head_dims", "query_head_dim"), ("value_head_dims", "value_head_dim"),
                       ("num_heads", "num_heads")):
        assert meta[key] == ",".join(map(str, getattr(cfg, field)))


# ------------------------------------------------------------------------------- bad input
def test_bad_input_fails_before_writing(bpe, tmp_path):
    path, vocab = bpe
    model = tiny_model(vocab)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        export_onnx(model, out, tmp_path / "missing.model")
    with pytest.raises(ValueError, match="non-causal"):
        export_onnx(model, out, path, ExportSpec(kinds=("streaming",)))
    with pytest.raises(ValueError, match="pieces but the model's vocabulary"):
        export_onnx(tiny_model(vocab + 3), out, path)
    with pytest.raises(ValueError, match="not trained with|must be|trained with"):
        export_onnx(tiny_model(vocab, causal=True), out, path, ExportSpec(kinds=("streaming",), chunk_size=48,
                                                                         left_context_frames=64))
    no_ctc = AsrModel(tiny_model(vocab).config, vocab_size=vocab, use_ctc=False)
    with pytest.raises(ValueError, match="no CTC head"):
        export_onnx(no_ctc, out, path, ExportSpec(kinds=("ctc",)))
    assert not out.exists()
    (out / "offline").mkdir(parents=True)
    (out / "offline" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        export_onnx(model, out, path)
    assert sorted(p.name for p in out.rglob("*")) == ["keep.txt", "offline"]


def test_icefall_checkpoint_of_another_architecture_is_rejected(bpe, tmp_path):
    path, vocab = bpe
    torch.save({"model": tiny_model(vocab).state_dict()}, tmp_path / "ck.pt")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"preset": "XS", **TINY, "embed_channels": [8, 32, 128]}))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="does not match"):
        export_main(["onnx", "--icefall-checkpoint", str(tmp_path / "ck.pt"), "--model-config", str(other),
                     "--use-ctc", "1", "--bpe-model", str(path), "--out-dir", str(out)])
    with pytest.raises(SystemExit, match="does not match"):  # the CTC head is in the file, not in the flags
        export_main(["onnx", "--icefall-checkpoint", str(tmp_path / "ck.pt"), "--model-config", "XS",
                     "--bpe-model", str(path), "--out-dir", str(out)])
    assert not out.exists()
