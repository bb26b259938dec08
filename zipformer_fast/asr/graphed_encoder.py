"""Offline encoding with CUDA graphs: batches padded to a few fixed (batch, frames) buckets, each
bucket's `AsrModel.encode` captured once in a torch.cuda.CUDAGraph and replayed for every later
batch that falls in it. A decode loop then pays one graph launch per batch instead of the
encoder's thousands of kernel launches (their host cost dominates small-batch decoding on a GPU).

Buckets: the batch size is rounded up to a power of two (at most `max_batch`) and the frame count
up to a multiple of `frame_step`. The extra rows repeat the first utterance (a real input, so
nothing in them can overflow) and are dropped from the result; the extra frames are zeros past
every utterance's length, zero-padded as a collated batch is. The result is what the same
utterances get in an eager batch with a longer utterance, not necessarily what they get alone:
icefall's encoder is not padding-neutral for the longest utterance of a batch (its last
downsampled frame pairs with a padding frame, and every frame attends to it).

`encode` has no host synchronisation (tests/test_compile.py), which is what makes it capturable.
The input checks of `forward_encoder` run on the caller's tensors before the copy into the static
buffers. Off CUDA (or with use_cuda_graphs=False) the padded batch runs eagerly: the same
bucketing, testable anywhere.

    encoder = GraphedEncoder(model)          # model on a CUDA device, in eval mode
    enc, enc_lens = encoder(features, feature_lens)   # enc has the bucket's frame count
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor


class GraphedEncoder:
    def __init__(self, model, frame_step: int = 200, max_batch: int = 128, use_cuda_graphs: bool = True,
                 warmup: int = 2):
        if model.training:
            raise ValueError("GraphedEncoder: put the model in eval mode first (training draws random numbers)")
        if frame_step < 1 or max_batch < 1:
            raise ValueError(f"GraphedEncoder: frame_step ({frame_step}) and max_batch ({max_batch}) must be >= 1")
        self.model = model
        self.frame_step = frame_step
        self.max_batch = max_batch
        self.use_cuda_graphs = use_cuda_graphs
        self.warmup = warmup
        self.graphs: Dict[Tuple[int, int], tuple] = {}
        self._pool = None

    def bucket(self, batch: int, frames: int) -> Tuple[int, int]:
        """(padded batch, padded frames) for a batch of `batch` utterances of up to `frames` frames."""
        b = 1 << max(0, batch - 1).bit_length()
        return min(b, max(self.max_batch, batch)), -(-frames // self.frame_step) * self.frame_step

    @torch.no_grad()
    def __call__(self, features: Tensor, feature_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """(B, T, F), (B,) -> encoder_out (B, T_bucket', E), encoder_out_lens (B,)."""
        self.model.check_inputs(features, feature_lens)
        B, T, _ = features.shape
        Bb, Tb = self.bucket(B, T)
        x = features.new_zeros((Bb, Tb, features.shape[2]))
        x[:B, :T] = features
        x[B:, :T] = features[:1]
        lens = feature_lens.new_empty((Bb,))
        lens[:B] = feature_lens
        lens[B:] = feature_lens[:1]
        if not (self.use_cuda_graphs and features.is_cuda):
            out, out_lens = self.model.encode(x, lens)
            return out[:B], out_lens[:B]
        entry = self.graphs.get((Bb, Tb))
        if entry is None:
            entry = self.graphs[(Bb, Tb)] = self._capture(x, lens)
        graph, static_x, static_lens, static_out, static_out_lens = entry
        static_x.copy_(x)
        static_lens.copy_(lens)
        graph.replay()
        # Copies: the next replay of any bucket may reuse this memory (one pool for all graphs).
        return static_out[:B].clone(), static_out_lens[:B].clone()

    def _capture(self, x: Tensor, lens: Tensor):
        static_x, static_lens = x.clone(), lens.clone()
        stream = torch.cuda.Stream(device=x.device)
        stream.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(stream):  # warm-up off the default stream, as torch.cuda.graph asks
            for _ in range(self.warmup):
                self.model.encode(static_x, static_lens)
        torch.cuda.current_stream(x.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out, static_out_lens = self.model.encode(static_x, static_lens)
        return graph, static_x, static_lens, static_out, static_out_lens
