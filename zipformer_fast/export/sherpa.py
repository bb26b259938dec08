"""Decode wav files with sherpa-onnx's Python API from an exported folder (offline transducer,
offline CTC, or streaming transducer), returning token ids so that hypotheses compare exactly with
our PyTorch searches (text is made from the ids with our own tokenizer).

sherpa-onnx computes its own fbank from the samples (kaldi-native-fbank: 25 ms povey window,
10 ms hop, 80 bins, dither 0, snip_edges false, samples in [-1, 1]): the settings of the lhotse
Fbank our recipes use, so the two agree up to float rounding. Its transducer searches treat <unk>
like blank (never emitted); ours emit it unless `model.unk_id` is set.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence, Union

from ..data.optional import require


def _sherpa():
    return require("sherpa_onnx", "decoding with sherpa-onnx (pip install sherpa-onnx)")


def read_tokens(path: Union[str, Path]) -> Dict[str, int]:
    """tokens.txt as {symbol: id}, each symbol also under the spelling sherpa-onnx's results use
    (sentencepiece's word-start mark U+2581 shown as a space)."""
    table = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        sym, idx = line.rsplit(" ", 1)
        table[sym] = int(idx)
        table.setdefault(sym.replace("\u2581", " "), int(idx))
    return table


def _graph(folder: Path, name: str, precision: str) -> str:
    path = folder / (f"{name}.onnx" if precision == "fp32" else f"{name}.{precision}.onnx")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (export with the {precision} variant)")
    return str(path)


def recognizer(folder: Union[str, Path], kind: str = "offline", method: str = "greedy_search",
               precision: str = "fp32", beam: int = 4, threads: int = 1):
    """A sherpa-onnx recognizer over <folder> = an export's offline/, ctc/ or streaming/ folder."""
    so = _sherpa()
    folder = Path(folder)
    tokens = str(folder / "tokens.txt")
    if kind == "offline":
        return so.OfflineRecognizer.from_transducer(
            encoder=_graph(folder, "encoder", precision), decoder=_graph(folder, "decoder", precision),
            joiner=_graph(folder, "joiner", precision), tokens=tokens, num_threads=threads,
            decoding_method=method, max_active_paths=beam)
    if kind == "ctc":
        return so.OfflineRecognizer.from_zipformer_ctc(model=_graph(folder, "model", precision), tokens=tokens,
                                                      num_threads=threads, decoding_method=method)
    if kind == "streaming":
        return so.OnlineRecognizer.from_transducer(
            tokens=tokens, encoder=_graph(folder, "encoder", precision), decoder=_graph(folder, "decoder", precision),
            joiner=_graph(folder, "joiner", precision), num_threads=threads, decoding_method=method,
            max_active_paths=beam)
    raise ValueError(f"kind {kind!r}: expected offline, ctc or streaming")


def read_wav(path: Union[str, Path]):
    sf = require("soundfile", "reading wav files")
    samples, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return samples[:, 0], sr


def decode_wavs(rec, wavs: Sequence[Union[str, Path]], tokens_txt: Union[str, Path], streaming: bool = False,
                batch: int = 1) -> Dict[str, object]:
    """Token-id hypotheses for each wav, plus audio seconds and decoding wall time (RTF = time / audio).
    batch: utterances per decode_streams call. Offline, sherpa-onnx pads a batch to its longest
    utterance, and the encoder's downsampling mixes padding frames into an utterance's last frames
    (icefall's semantics, PyTorch's too), so batched hypotheses can differ from single-utterance
    ones at the end; batch 1 (default) makes results comparable utterance by utterance.
    Streaming: each wav is fed whole, then 0.3 s of zeros (so that the last chunk is flushed) and input_finished(),
    then decoded chunk by chunk as sherpa-onnx's online examples do."""
    import numpy as np
    table = read_tokens(tokens_txt)
    hyps: List[List[int]] = []
    audio_s, t0 = 0.0, time.perf_counter()
    for start in range(0, len(wavs), batch):
        group = wavs[start:start + batch]
        streams = []
        for w in group:
            samples, sr = read_wav(w)
            audio_s += len(samples) / sr
            s = rec.create_stream()
            s.accept_waveform(sr, samples)
            if streaming:
                s.accept_waveform(sr, np.zeros(int(0.3 * sr), dtype=np.float32))
                s.input_finished()
            streams.append(s)
        if streaming:
            while True:
                ready = [s for s in streams if rec.is_ready(s)]
                if not ready:
                    break
                rec.decode_streams(ready)
            results = [rec.get_result_all(s) for s in streams]
        else:
            rec.decode_streams(streams)
            results = [s.result for s in streams]
        for r in results:
            hyps.append([table[t] for t in r.tokens])
    elapsed = time.perf_counter() - t0
    return {"hyps": hyps, "audio_seconds": audio_s, "decode_seconds": elapsed,
            "rtf": elapsed / max(audio_s, 1e-9)}
