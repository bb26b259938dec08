"""ConvolutionModule (icefall) and the chunk-causal depthwise conv used when causal=True.

ConvolutionModule: in_proj (D -> 2D), GLU-style gate x * sigmoid(s) (value first, gate second),
zero padded frames, depthwise conv, SwooshR + out_proj (ActivationDropoutAndLinear, init 0.05).
There is no norm in this module.

ChunkCausalDepthwiseConv1d: a causal depthwise conv of width (K+1)/2 over the past, plus a
full-width depthwise conv run inside each chunk only (so no look-ahead beyond the chunk), scaled
per position by 1 + left-edge + right-edge corrections (chunkwise_conv_scale, (2, D, K)).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..ops.gated_conv import gated_depthwise_conv1d
from ..ops.residual_linear import residual_linear
from ..ops.traced_conv import conv
from .grad_shapers import Balancer, Whiten, whitening_schedule
from .linear import ActivationDropoutAndLinear
from .scheduled_float import ScheduledFloat
from .streaming_state import check_cache


def _conv(module: nn.Conv1d, x: Tensor) -> Tensor:
    """module(x) through ops.traced_conv.conv (under torch.compile its gradient is one opaque node)."""
    return conv(x, module.weight, module.bias, module.stride, module.padding, module.groups)


class ChunkCausalDepthwiseConv1d(nn.Module):
    def __init__(self, channels: int, kernel_size: int, initial_scale: float = 1.0, bias: bool = True):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ChunkCausalDepthwiseConv1d: kernel_size={kernel_size} must be odd")
        self.kernel_size = kernel_size
        self.causal_conv = nn.Conv1d(channels, channels, groups=channels, kernel_size=(kernel_size + 1) // 2,
                                     padding=0, bias=True)
        self.chunkwise_conv = nn.Conv1d(channels, channels, groups=channels, kernel_size=kernel_size,
                                        padding=kernel_size // 2, bias=bias)
        # Row 0: extra scale near a chunk's left edge; row 1: near its right edge (added to 1.0).
        self.chunkwise_conv_scale = nn.Parameter(torch.zeros(2, channels, kernel_size))
        with torch.no_grad():
            self.causal_conv.weight.mul_(initial_scale)
            self.chunkwise_conv.weight.mul_(initial_scale)
            if bias:
                nn.init.uniform_(self.causal_conv.bias, -0.1 * initial_scale, 0.1 * initial_scale)

    def chunk_scale(self, chunk_size: int) -> Tensor:
        """(D, chunk_size) multiplier for the chunkwise conv output."""
        left, right = self.chunkwise_conv_scale[0], self.chunkwise_conv_scale[1]
        if chunk_size < self.kernel_size:
            left, right = left[:, :chunk_size], right[:, -chunk_size:]
        else:
            pad = left.new_zeros(left.shape[0], chunk_size - self.kernel_size)
            left, right = torch.cat((left, pad), dim=-1), torch.cat((pad, right), dim=-1)
        return 1.0 + (left + right)

    def forward(self, x: Tensor, chunk_size: int = -1) -> Tensor:
        """x (B, D, T); chunk_size < 0 or > T means a single chunk of length T."""
        B, D, T = x.shape
        left_pad = self.kernel_size // 2
        if chunk_size < 0 or chunk_size > T:
            chunk_size = T
        right_pad = -T % chunk_size
        x = nn.functional.pad(x, (left_pad, right_pad))
        x_causal = _conv(self.causal_conv, x[..., :left_pad + T])
        x_chunk = x[..., left_pad:]
        n = x_chunk.shape[2] // chunk_size
        x_chunk = x_chunk.reshape(B, D, n, chunk_size).permute(0, 2, 1, 3).reshape(B * n, D, chunk_size)
        x_chunk = _conv(self.chunkwise_conv, x_chunk) * self.chunk_scale(chunk_size)
        x_chunk = x_chunk.reshape(B, n, D, chunk_size).permute(0, 2, 1, 3).reshape(B, D, n * chunk_size)[..., :T]
        return x_chunk + x_causal

    def streaming_forward(self, x: Tensor, cache: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk: x (B, D, T) is the whole chunk, cache (B, D, K//2) the last K//2 inputs of the
        previous chunks -> (output (B, D, T), new cache)."""
        left_pad = self.kernel_size // 2
        check_cache("cached_conv", cache, (x.shape[0], x.shape[1], left_pad))
        x = torch.cat((cache, x), dim=2)
        x_causal = self.causal_conv(x)
        x_chunk = self.chunkwise_conv(x[..., left_pad:]) * self.chunk_scale(x.shape[2] - left_pad)
        return x_chunk + x_causal, x[..., x.shape[2] - left_pad:]


class ConvolutionModule(nn.Module):
    def __init__(self, channels: int, kernel_size: int, causal: bool):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ConvolutionModule: kernel_size={kernel_size} must be odd")
        self.causal = causal
        self.in_proj = nn.Linear(channels, 2 * channels)
        self.balancer1 = Balancer(channels, channel_dim=-1,
                                  min_positive=ScheduledFloat((0.0, 0.05), (8000.0, 0.025)), max_positive=1.0,
                                  min_abs=1.5, max_abs=ScheduledFloat((0.0, 5.0), (8000.0, 10.0), default=1.0))
        self.sigmoid = nn.Sigmoid()
        if causal:
            self.depthwise_conv = ChunkCausalDepthwiseConv1d(channels, kernel_size)
        else:
            self.depthwise_conv = nn.Conv1d(channels, channels, groups=channels, kernel_size=kernel_size,
                                            padding=kernel_size // 2)
        self.balancer2 = Balancer(channels, channel_dim=1,
                                  min_positive=ScheduledFloat((0.0, 0.1), (8000.0, 0.05)), max_positive=1.0,
                                  min_abs=ScheduledFloat((0.0, 0.2), (20000.0, 0.5)), max_abs=10.0)
        self.whiten = Whiten(num_groups=1, whitening_limit=whitening_schedule(7.5), prob=(0.025, 0.25),
                             grad_scale=0.01)
        self.out_proj = ActivationDropoutAndLinear(channels, channels, activation="SwooshR", dropout_p=0.0,
                                                   initial_scale=0.05)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor = None, chunk_size: int = -1,
                residual: Optional[Tensor] = None) -> Tensor:
        """x (T, B, D) -> (T, B, D), or residual + that when a residual is given."""
        if chunk_size >= 0 and not self.causal:
            raise ValueError("ConvolutionModule: chunk_size >= 0 needs a model built with causal=True")
        if not self.causal:
            # in_proj, the gate (with balancer1 on its input) and the depthwise conv in one op: its
            # fused path stores only the module input and recomputes the rest in backward.
            D = self.in_proj.out_features // 2
            needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(
                p.requires_grad for p in self.in_proj.parameters()))
            balancer = self.balancer1.draw(tuple(x.shape[:-1]) + (D,), x.device, needs_grad)
            x = gated_depthwise_conv1d(x, self.in_proj.weight, self.in_proj.bias, src_key_padding_mask,
                                           self.depthwise_conv.weight, self.depthwise_conv.bias, balancer)
        else:
            x, s = self.in_proj(x).chunk(2, dim=-1)
            x = x * self.sigmoid(self.balancer1(s))
            x = x.permute(1, 2, 0)  # (B, D, T)
            if src_key_padding_mask is not None:
                x = x.masked_fill(src_key_padding_mask.unsqueeze(1).expand_as(x), 0.0)
            x = self.depthwise_conv(x, chunk_size=chunk_size) if chunk_size >= 0 else self.depthwise_conv(x)
        x = self.balancer2(x).permute(2, 0, 1)  # (T, B, D)
        if residual is not None and not torch.is_grad_enabled():  # Whiten is the identity, dropout p = 0
            return residual_linear(residual, x, self.out_proj.weight, self.out_proj.bias,
                                   activation=self.out_proj.activation)
        y = self.out_proj(self.whiten(x))
        return y if residual is None else residual + y

    def streaming_forward(self, x: Tensor, cache: Tensor, src_key_padding_mask: Optional[Tensor]
                          ) -> Tuple[Tensor, Tensor]:
        """One chunk of a causal module: x (T, B, D), cache (B, D, K//2), src_key_padding_mask
        (B, T) for the chunk's own frames -> (out (T, B, D), new cache)."""
        if not self.causal:
            raise ValueError("ConvolutionModule.streaming_forward needs a model built with causal=True")
        x, s = self.in_proj(x).chunk(2, dim=-1)
        x = (x * self.sigmoid(s)).permute(1, 2, 0)  # (B, D, T)
        if src_key_padding_mask is not None:
            x = x.masked_fill(src_key_padding_mask.to(torch.bool).unsqueeze(1).expand_as(x), 0.0)
        x, cache = self.depthwise_conv.streaming_forward(x, cache)
        return self.out_proj(x.permute(2, 0, 1)), cache
