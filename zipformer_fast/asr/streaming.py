"""Streaming recognition of many concurrent streams with a causal Zipformer transducer, the way
icefall's egs/librispeech/ASR/zipformer/streaming_decode.py (decode_one_chunk) and
decode_stream.py (DecodeStream) do it.

    recognizer = StreamingRecognizer(model, chunk_size=16, left_context_frames=64)
    stream = recognizer.create_stream("utt-1")
    stream.accept_features(fbank_frames)      # (T, 80), any number of frames, whenever they arrive
    stream.input_finished()                   # no more input: appends the tail padding
    recognizer.decode([stream])               # or step(streams) once per chunk, from a serving loop
    print(stream.tokens)

A `Stream` holds one utterance's state: its buffered features, the encoder states (batch 1, layout
of asr/streaming_encoder.py) and its search state (the greedy hypothesis, or the modified-beam-search
hypotheses). `StreamingRecognizer.step(streams)` takes every stream that has a full chunk of input
(2 * chunk_size + 13 feature frames; or any remainder once its input is finished), stacks their states
into one batch, runs one chunk of the encoder and of the search, and unstacks. Streams join and
leave the batch freely between steps.

icefall's conventions, kept so that results match its streaming decoding:
- input_finished() appends 13 + 30 frames of LOG_EPS (look-ahead plus tail padding) so that the
  last words are flushed through the causal model;
- a short last chunk is padded with LOG_EPS to the batch's longest chunk; only when every chunk in
  the batch is short, all are padded to the full chunk length and their lengths grow with it (so a
  stream's last-chunk outputs depend on its batch companions, within the tail padding);
- the search runs over every output frame of a chunk (icefall's streaming greedy and modified beam
  search do not use the chunk's output lengths).

The recognizer fixes the model's chunk size and left context (Zipformer2.configure_streaming),
which also makes the model's ordinary forward use that chunk mask (simulated streaming).
"""
from __future__ import annotations

import itertools
from typing import List, Optional, Sequence

import torch
from torch import Tensor

from . import streaming_encoder as senc
from .search import Beam, _decoder_out, _joiner_logits, _skip_ids, beam_search_frame, best_hypothesis, initial_beam

TAIL_PADDING_FRAMES = 30
DECODING_METHODS = ("greedy_search", "modified_beam_search")


class Stream:
    """One utterance being recognised; create with StreamingRecognizer.create_stream."""

    def __init__(self, recognizer: "StreamingRecognizer", stream_id, states: List[Tensor]):
        self.id = stream_id
        self.recognizer = recognizer
        self.states = states
        self.feature_dim = recognizer.feature_dim
        self._buffer = torch.empty(0, self.feature_dim)  # frames from absolute index _buffer_start on
        self._buffer_start = 0
        self.num_frames = 0            # feature frames received (plus the tail padding once finished)
        self.num_processed_frames = 0  # start of the next chunk's feature window
        self.encoder_frames = 0        # encoder output frames decoded so far
        self.finished = False          # input_finished() was called
        self.done = False              # every frame has gone through the encoder
        c = recognizer.model.decoder.context_size
        self.hyp: List[int] = [-1] * (c - 1) + [recognizer.model.decoder.blank_id]
        self.beam: Beam = initial_beam(recognizer.model)

    # ------------------------------------------------------------------------------------ input
    def accept_features(self, features: Tensor) -> None:
        """Append feature frames (T, feature_dim) (fbank, log-mel, as in training)."""
        if self.finished:
            raise RuntimeError(f"stream {self.id!r}: features given after input_finished()")
        if not isinstance(features, Tensor) or features.ndim != 2 or not features.is_floating_point():
            raise ValueError(f"stream {self.id!r}: features must be a floating (frames, {self.feature_dim}) tensor, "
                             f"got {getattr(features, 'shape', type(features).__name__)}")
        if features.shape[1] != self.feature_dim:
            raise ValueError(f"stream {self.id!r}: features have {features.shape[1]} channels; the model expects "
                             f"{self.feature_dim}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError(f"stream {self.id!r}: features contain NaN or Inf")
        self._buffer = torch.cat((self._buffer, features.detach().to(self._buffer.dtype).cpu()), dim=0)
        self.num_frames += features.shape[0]

    def input_finished(self) -> None:
        """No more input: pad with look-ahead plus tail frames of LOG_EPS so that the end is decoded."""
        if self.finished:
            raise RuntimeError(f"stream {self.id!r}: input_finished() called twice")
        pad = torch.full((senc.LOOKAHEAD_FRAMES + TAIL_PADDING_FRAMES, self.feature_dim), senc.LOG_EPS)
        self._buffer = torch.cat((self._buffer, pad), dim=0)
        self.num_frames += pad.shape[0]
        self.finished = True

    # ------------------------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """Whether a step can process this stream now (a full chunk buffered, or the finished remainder)."""
        if self.done:
            return False
        available = self.num_frames - self.num_processed_frames
        return available >= self.recognizer.chunk_frames or (self.finished and available > 0)

    def take_chunk(self) -> Tensor:
        """The next chunk's feature window (up to 2 * chunk_size + 13 frames); advances by 2 * chunk_size."""
        start = self.num_processed_frames - self._buffer_start
        window = self._buffer[start:start + self.recognizer.chunk_frames]
        self.num_processed_frames += 2 * self.recognizer.chunk_size
        if self.finished and self.num_processed_frames >= self.num_frames:
            self.done = True
        # Frames before the next window are never read again.
        drop = min(self.num_processed_frames, self.num_frames) - self._buffer_start
        self._buffer = self._buffer[drop:]
        self._buffer_start += drop
        return window

    @property
    def tokens(self) -> List[int]:
        """Token ids recognised so far (final once done)."""
        c = self.recognizer.model.decoder.context_size
        if self.recognizer.decoding_method == "greedy_search":
            return self.hyp[c:]
        return list(best_hypothesis(self.beam)[0][c:])


class StreamingRecognizer:
    """Steps many Streams through a causal AsrModel (transducer) one chunk at a time.

    model: an AsrModel built with causal=True (eval mode is set here). chunk_size and
    left_context_frames are in 50 Hz frames (after Conv-Embed) and must be values the model was
    trained with unless allow_untrained. decoding_method: "greedy_search" or "modified_beam_search"
    (beam = number of active paths)."""

    def __init__(self, model, chunk_size: int, left_context_frames: int, decoding_method: str = "greedy_search",
                 beam: int = 4, allow_untrained: bool = False):
        if decoding_method not in DECODING_METHODS:
            raise ValueError(f"decoding_method {decoding_method!r}: expected one of {DECODING_METHODS}")
        if beam < 1:
            raise ValueError(f"beam={beam} must be >= 1")
        if not getattr(model, "use_transducer", False):
            raise ValueError("StreamingRecognizer needs a model with a transducer (use_transducer=True)")
        model.encoder.configure_streaming(chunk_size, left_context_frames, allow_untrained=allow_untrained)
        self.model = model.eval()
        self.chunk_size = int(chunk_size)
        self.left_context_frames = int(left_context_frames)
        self.chunk_frames = senc.chunk_feature_frames(self.chunk_size)
        self.feature_dim = model.config.feature_dim
        self.decoding_method = decoding_method
        self.beam = beam
        self._ids = itertools.count()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def create_stream(self, stream_id=None) -> Stream:
        """A new, empty stream (initial encoder states and search state)."""
        if stream_id is None:
            stream_id = next(self._ids)
        return Stream(self, stream_id, senc.get_init_states(self.model, 1, self.device))

    # ------------------------------------------------------------------------------------- step
    @torch.no_grad()
    def step(self, streams: Sequence[Stream], max_batch: Optional[int] = None) -> List[Stream]:
        """One chunk for every ready stream in `streams` (at most max_batch of them, in order);
        streams without a full chunk yet, or done, are skipped. Returns the streams that finished."""
        for s in streams:
            if not isinstance(s, Stream) or s.recognizer is not self:
                raise ValueError("step: every stream must come from this recognizer's create_stream() (its states "
                                 "belong to this model and streaming configuration)")
        batch = [s for s in streams if s.ready][:max_batch]
        if not batch:
            return []
        windows = [s.take_chunk() for s in batch]
        lens = torch.tensor([w.shape[0] for w in windows], dtype=torch.int64)
        features = torch.nn.utils.rnn.pad_sequence(windows, batch_first=True, padding_value=senc.LOG_EPS)
        if features.shape[1] < self.chunk_frames:  # every chunk in the batch is short
            pad = self.chunk_frames - features.shape[1]
            features = torch.nn.functional.pad(features, (0, 0, 0, pad), value=senc.LOG_EPS)
            lens += pad
        device = self.device
        param = next(self.model.parameters())
        states = senc.stack_states([s.states for s in batch])
        encoder_out, encoder_out_lens, new_states = senc.streaming_forward(
            self.model, features.to(device=device, dtype=param.dtype), lens.to(device), states)
        enc = self.model.joiner.encoder_proj(encoder_out)  # (B, T, J)
        if self.decoding_method == "greedy_search":
            self._greedy(enc, batch)
        else:
            self._beam_search(enc, batch)
        for s, st in zip(batch, senc.unstack_states(new_states)):
            s.states = st
            s.encoder_frames += enc.shape[1]
        return [s for s in batch if s.done]

    def decode(self, streams: Sequence[Stream], max_batch: Optional[int] = None) -> None:
        """Step until no stream is ready (all done, if every stream's input is finished)."""
        while any(s.ready for s in streams):
            self.step(streams, max_batch=max_batch)

    # ----------------------------------------------------------------------------------- search
    def _greedy(self, enc: Tensor, streams: List[Stream]) -> None:
        """icefall streaming_beam_search.greedy_search: one symbol per frame at most, every frame."""
        model = self.model
        c = model.decoder.context_size
        skip = _skip_ids(model)
        dec = _decoder_out(model, [s.hyp[-c:] for s in streams], enc.device)
        for t in range(enc.shape[1]):
            best = _joiner_logits(model, enc[:, t], dec).argmax(dim=1).tolist()
            emitted = False
            for s, token in zip(streams, best):
                if token not in skip:
                    s.hyp.append(token)
                    emitted = True
            if emitted:
                dec = _decoder_out(model, [s.hyp[-c:] for s in streams], enc.device)

    def _beam_search(self, enc: Tensor, streams: List[Stream]) -> None:
        """icefall streaming_beam_search.modified_beam_search, hypotheses carried across chunks."""
        beams = [s.beam for s in streams]
        for t in range(enc.shape[1]):
            beams = beam_search_frame(self.model, enc[:, t], beams, self.beam)
        for s, b in zip(streams, beams):
            s.beam = b


def recognize(model, features: Sequence[Tensor], chunk_size: int, left_context_frames: int,
              decoding_method: str = "greedy_search", beam: int = 4, max_batch: Optional[int] = None
              ) -> List[List[int]]:
    """Token ids for each utterance (T_i, feature_dim), all streamed concurrently (whole input given)."""
    rec = StreamingRecognizer(model, chunk_size, left_context_frames, decoding_method, beam)
    streams = [rec.create_stream(i) for i in range(len(features))]
    for s, f in zip(streams, features):
        s.accept_features(f)
        s.input_finished()
    rec.decode(streams, max_batch=max_batch)
    return [s.tokens for s in streams]
