"""Stream wav files through a causal Zipformer transducer, all files at once, as a live service would
see them: features arrive in small pieces, the recognizer steps every stream that has a full chunk,
partial results are printed as they grow.

    python -m zipformer_fast.asr.streaming_example a.wav b.wav \
        --checkpoint exp/synthetic-causal/checkpoint-250.pt --bpe-model data/synthetic/lang/bpe.model \
        --chunk-size 32 --left-context-frames 128

--checkpoint is a recipes/train.py checkpoint of a model trained with --causal 1 (its "model" weights
and the configuration recorded in it). The 80-dim Fbank of each file is computed with lhotse (the
recipes' features) and fed --feed-ms at a time. Needs lhotse and sentencepiece (pip install
zipformer_fast[data]).
"""
from __future__ import annotations

import argparse
import time
from typing import List

import torch


def load_causal_model(checkpoint: str):
    """AsrModel with the weights and configuration of a recipes/train.py checkpoint."""
    from ..config import ZipformerConfig
    from .model import AsrModel
    ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(ck, dict) or "params" not in ck or "model" not in ck:
        raise ValueError(f"{checkpoint}: not a recipes/train.py checkpoint (expected 'model' and 'params')")
    p = ck["params"]
    config = ZipformerConfig(**p["model_config"]).replace(vocab_size=p["vocab_size"])
    model = AsrModel(config, vocab_size=p["vocab_size"], use_transducer=p["use_transducer"], use_ctc=p["use_ctc"])
    model.load_state_dict(ck["model"])
    return model.eval()


def fbank(path: str) -> torch.Tensor:
    """(frames, 80) kaldi-compatible Fbank at 16 kHz, 10 ms shift."""
    from lhotse import Recording

    from ..data.manifests import fbank_extractor
    rec = Recording.from_file(path)
    if rec.sampling_rate != 16000:
        rec = rec.resample(16000)
    samples = rec.load_audio()[:1]  # first channel
    return torch.from_numpy(fbank_extractor().extract(samples, 16000)).float()


def main(argv: List[str] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wavs", nargs="+")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--bpe-model", required=True)
    p.add_argument("--chunk-size", type=int, default=32, help="50 Hz frames per chunk (32 = 640 ms)")
    p.add_argument("--left-context-frames", type=int, default=128)
    p.add_argument("--decoding-method", default="greedy_search", choices=["greedy_search", "modified_beam_search"])
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--feed-ms", type=int, default=100, help="features arrive in pieces of this many ms")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (chunk-sized ops are small: 1 is usually fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ..data.tokenizer import Tokenizer
    from .streaming import StreamingRecognizer
    tokenizer = Tokenizer(args.bpe_model)
    model = load_causal_model(args.checkpoint)
    rec = StreamingRecognizer(model, args.chunk_size, args.left_context_frames, args.decoding_method, args.beam)
    feats = {path: fbank(path) for path in args.wavs}
    streams = [rec.create_stream(path) for path in args.wavs]
    piece = max(1, args.feed_ms // 10)
    fed = {s.id: 0 for s in streams}
    shown = {s.id: "" for s in streams}
    compute = 0.0
    while not all(s.done for s in streams):
        for s in streams:  # new audio arrives for every stream still talking
            f = feats[s.id]
            if not s.finished:
                s.accept_features(f[fed[s.id]:fed[s.id] + piece])
                fed[s.id] += piece
                if fed[s.id] >= f.shape[0]:
                    s.input_finished()
        t0 = time.perf_counter()
        rec.step(streams)
        compute += time.perf_counter() - t0
        for s in streams:
            text = tokenizer.decode(s.tokens)
            if text != shown[s.id]:
                shown[s.id] = text
                print(f"{s.id} [{s.encoder_frames * 40 / 1000:.2f} s]: {text}", flush=True)
    audio = sum(f.shape[0] for f in feats.values()) / 100
    for s in streams:
        print(f"{s.id}: {tokenizer.decode(s.tokens)}")
    print(f"{len(streams)} streams, {audio:.1f} s of audio, encoder+search compute {compute:.2f} s "
          f"(real-time factor {compute / audio:.3f}); chunk {args.chunk_size * 20} ms + 130 ms look-ahead")


if __name__ == "__main__":
    main()
