"""onnxruntime against PyTorch on the same inputs, graph by graph: the equivalence numbers that
tests and the recipe's export stage report.

Errors are reported as max |onnx - torch| / max |torch| over the valid (unpadded) frames, so a
figure means the same thing for a tiny test model and a trained one. Padded frames are excluded:
their values are not defined (icefall's graphs leave them unmasked too).
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Sequence, Union

import torch

from ..runtime import use_backend
from ..data.optional import require
from .wrappers import OnnxCtcModel, OnnxDecoder, OnnxEncoder, OnnxJoiner


def session(path: Union[str, Path], threads: int = 1):
    ort = require("onnxruntime", "checking exported graphs (pip install onnxruntime)")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _offline_chunks(model, graph_path):
    if not model.config.causal:
        yield
        return
    from .onnx_files import read_metadata
    from .streaming import configured
    meta = read_metadata(graph_path)
    with configured(model, int(meta["chunk_size"]), int(meta["left_context_frames"])):
        yield


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def _valid_rel(out: torch.Tensor, ref: torch.Tensor, lens: torch.Tensor) -> float:
    worst = 0.0
    for i, n in enumerate(lens.tolist()):
        worst = max(worst, float((out[i, :n].double() - ref[i, :n].double()).abs().max()))
    return worst / max(float(ref.double().abs().max()), 1e-30)


@torch.no_grad()
def compare_offline(model, files: Dict[str, Path], features: torch.Tensor, feature_lens: torch.Tensor,
                    contexts: torch.Tensor = None) -> Dict[str, float]:
    """Relative errors of encoder (valid frames), encoder_out_lens (exact: 0.0), decoder and joiner
    for a batch of fbank features (N, T, 80) + lengths; contexts (M, context_size) ids for the
    decoder (default: every token after the [-1, blank] start context). A causal model runs with
    the chunk size and left context recorded in the encoder's metadata."""
    model.eval()
    with _offline_chunks(model, files["encoder"]), use_backend("reference"):
        enc_ref, lens_ref = OnnxEncoder(model)(features, feature_lens)
        enc, lens = session(files["encoder"]).run(None, {"x": features.numpy(), "x_lens": feature_lens.numpy()})
        enc, lens = torch.from_numpy(enc), torch.from_numpy(lens)
        c = model.decoder.context_size
        if contexts is None:
            V = model.vocab_size
            contexts = torch.stack([torch.full((V,), -1), torch.arange(V)], 1)[:, -c:] if c > 1 else \
                torch.arange(V).unsqueeze(1)
        dec_ref = OnnxDecoder(model)(contexts)
        dec = torch.from_numpy(session(files["decoder"]).run(None, {"y": contexts.numpy()})[0])
        frames = enc_ref[0, : int(lens_ref[0])]
        n = min(frames.shape[0], dec_ref.shape[0])
        e_in, d_in = frames[:n].contiguous(), dec_ref[:n].contiguous()
        logit_ref = OnnxJoiner(model)(e_in, d_in)
        logit = torch.from_numpy(session(files["joiner"]).run(
            None, {"encoder_out": e_in.numpy(), "decoder_out": d_in.numpy()})[0])
    return {"encoder_out": _valid_rel(enc, enc_ref, lens_ref),
            "encoder_out_lens": float((lens - lens_ref).abs().max()),
            "decoder_out": _rel(dec, dec_ref), "logit": _rel(logit, logit_ref)}


@torch.no_grad()
def compare_ctc(model, path: Path, features: torch.Tensor, feature_lens: torch.Tensor) -> Dict[str, float]:
    model.eval()
    with _offline_chunks(model, path), use_backend("reference"):
        ref, lens_ref = OnnxCtcModel(model)(features, feature_lens)
    out, lens = session(path).run(None, {"x": features.numpy(), "x_lens": feature_lens.numpy()})
    out, lens = torch.from_numpy(out), torch.from_numpy(lens)
    return {"log_probs": _valid_rel(out, ref, lens_ref), "log_probs_len": float((lens - lens_ref).abs().max())}


def ort_greedy_search(files: Dict[str, Path], features: torch.Tensor, feature_lens: torch.Tensor,
                      context_size: int, skip_ids: Sequence[int] = (0,)) -> list:
    """Transducer greedy search (one symbol per frame) run on the exported graphs with onnxruntime:
    the decoding sherpa-onnx does, on features we choose."""
    enc_s, dec_s, join_s = (session(files[k]) for k in ("encoder", "decoder", "joiner"))
    enc, lens = enc_s.run(None, {"x": features.numpy(), "x_lens": feature_lens.numpy()})
    hyps = []
    for b in range(enc.shape[0]):
        ys = [-1] * (context_size - 1) + [0]
        dec = dec_s.run(None, {"y": torch.tensor([ys[-context_size:]]).numpy()})[0]
        for t in range(int(lens[b])):
            logit = join_s.run(None, {"encoder_out": enc[b, t:t + 1], "decoder_out": dec})[0]
            k = int(logit[0].argmax())
            if k not in skip_ids:
                ys.append(k)
                dec = dec_s.run(None, {"y": torch.tensor([ys[-context_size:]]).numpy()})[0]
        hyps.append(ys[context_size:])
    return hyps


@torch.no_grad()
def compare_streaming(model, encoder_path: Path, features: torch.Tensor, chunk_size: int, left_context_frames: int,
                      ) -> Dict[str, float]:
    """Feed `features` (N, T, 80) chunk after chunk to the streaming encoder graph and to PyTorch,
    each carrying its own states; worst relative error over all chunks of encoder_out and of each
    state (the states compared after every chunk), plus the number of chunks."""
    from .streaming import OnnxStreamingEncoder, configured, init_states, state_names
    from ..asr.streaming_encoder import chunk_feature_frames
    model.eval()
    names = state_names(model)
    sess = session(encoder_path)
    T = chunk_feature_frames(chunk_size)
    hop = 2 * chunk_size
    n_chunks = (features.shape[1] - T) // hop + 1
    worst = {"encoder_out": 0.0, "states": 0.0, "processed_lens": 0.0, "chunks": n_chunks}
    with configured(model, chunk_size, left_context_frames), use_backend("reference"):
        wrapper = OnnxStreamingEncoder(model).eval()
        ref_states = init_states(model, features.shape[0])
        ort_states = [s.numpy() for s in ref_states]
        for c in range(n_chunks):
            x = features[:, c * hop: c * hop + T].contiguous()
            ref_out, ref_states = wrapper(x, ref_states)
            outs = sess.run(None, {"x": x.numpy(), **dict(zip(names, ort_states))})
            worst["encoder_out"] = max(worst["encoder_out"], _rel(torch.from_numpy(outs[0]), ref_out))
            ort_states = outs[1:]
            for name, o, r in zip(names, ort_states, ref_states):
                err = float((torch.from_numpy(o).double() - r.double()).abs().max())
                if name == "processed_lens":
                    worst["processed_lens"] = max(worst["processed_lens"], err)
                else:
                    worst["states"] = max(worst["states"], err / max(float(r.double().abs().max()), 1e-30))
    return worst
