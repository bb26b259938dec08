"""Conv2dSubsampling ("Conv-Embed", icefall subsampling.py) with its ConvNeXt block.

(N, T, 80) -> (N, (T-7)//2, D0). The `conv` Sequential indices (0, 4, 7 hold the Conv2d layers) and
the channel-major flattening (feature index = channel*19 + freq) are what icefall checkpoints expect.

Forward does not call the parameter-free SwooshR / SwooshL modules (conv[3], conv[6], conv[9],
convnext.activation): each activation runs inside conv_chain with the convolutions that read
its output (same values; the fused path then stores only the pre-activation). The modules stay so
that the module tree is icefall's.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..ops.conv_chain import conv_chain
from ..ops.swoosh import swoosh_l
from ..ops.traced_conv import conv
from .activations import SwooshL, SwooshR
from .bias_norm import BiasNorm
from .dropout import Dropout3
from .grad_shapers import Balancer, ScaleGrad, Whiten
from .linear import ScaledConv2d
from .randomness import keep_mask
from .scheduled_float import FloatLike, ScheduledFloat, value
from .streaming_state import check_cache


def _conv_spec(conv: nn.Conv2d):
    """(weight, bias, stride, padding, groups) of a zero-padded, undilated Conv2d, for conv_chain."""
    if conv.padding_mode != "zeros" or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
        raise ValueError(f"{conv}: conv_chain needs zero padding given as numbers and dilation 1")
    return conv.weight, conv.bias, tuple(conv.stride), tuple(conv.padding), conv.groups


class ConvNeXt(nn.Module):
    """x + pointwise2(SwooshL(pointwise1(depthwise7x7(x)))), with per-sample layer drop in training."""

    def __init__(self, channels: int, hidden_ratio: int = 3, kernel_size: Tuple[int, int] = (7, 7),
                 layerdrop_rate: FloatLike = None):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        hidden = channels * hidden_ratio
        if layerdrop_rate is None:
            layerdrop_rate = ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
        self.layerdrop_rate = layerdrop_rate
        self.depthwise_conv = nn.Conv2d(channels, channels, groups=channels, kernel_size=kernel_size,
                                        padding=self.padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden, kernel_size=1)
        self.hidden_balancer = Balancer(hidden, channel_dim=1, min_positive=0.3, max_positive=1.0,
                                        min_abs=0.75, max_abs=5.0)
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden, channels, kernel_size=1, initial_scale=0.01)
        self.out_balancer = Balancer(channels, channel_dim=1, min_positive=0.4, max_positive=0.6,
                                     min_abs=1.0, max_abs=6.0)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25), grad_scale=0.01)

    def forward(self, x: Tensor, input_activation: Optional[str] = None) -> Tensor:
        """x (N, C, T, F) -> same shape. With input_activation ("SwooshR"), x is the pre-activation
        and the block starts with that activation (Conv2dSubsampling passes its last SwooshR here, so
        that conv_chain can fuse it with the convs that read its output)."""
        mask = None
        if self.training:
            rate = value(self.layerdrop_rate)
            if isinstance(rate, Tensor):  # device-side (torch.compile): always drawn
                mask = keep_mask((x.shape[0], 1, 1, 1), rate, x.device)
            elif rate != 0.0:
                mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device) > rate
        # depthwise -> pointwise1 -> hidden_balancer -> SwooshL -> pointwise2 as one conv_chain
        # (its fused path stores only the chain's input and recomputes the rest in backward).
        stages = [("conv", _conv_spec(self.depthwise_conv)), ("conv", _conv_spec(self.pointwise_conv1)),
                  ("balancer", None), ("swoosh", "SwooshL"), ("conv", _conv_spec(self.pointwise_conv2))]
        if input_activation is not None:
            stages.insert(0, ("swoosh", input_activation))
        # The Balancer acts only on a tensor that requires grad (pointwise1's output).
        front = list(self.depthwise_conv.parameters()) + list(self.pointwise_conv1.parameters())
        needs_grad = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in front))
        hidden_shape = (x.shape[0], self.pointwise_conv1.out_channels) + tuple(x.shape[2:])
        stages[-3] = ("balancer", self.hidden_balancer.draw(hidden_shape, x.device, needs_grad))
        if input_activation is None:
            bypass = x
            x = conv_chain(x, stages)
        else:
            x, bypass = conv_chain(x, stages, return_after=0)
        if mask is not None:
            x = x * mask
        x = self.out_balancer(bypass + x)
        # Whiten wants channels last.
        return self.out_whiten(x.transpose(1, 3)).transpose(1, 3)

    def streaming_forward(self, x: Tensor, cached_left_pad: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk (icefall ConvNeXt.streaming_forward), eval semantics. x (N, C, T+3, F) is the
        activated input whose last 3 frames are look-ahead for the 7x7 depthwise conv; cached_left_pad
        (N, C, 3, F) the 3 frames before it. Returns (N, C, T, F) and the new left pad (frames T..T+2
        of the padded input, i.e. the 3 frames before the next chunk's first output)."""
        pad_t, pad_f = self.padding
        check_cache("cached_left_pad", cached_left_pad, (x.shape[0], x.shape[1], pad_t, x.shape[3]))
        T = x.shape[2] - pad_t
        bypass = x[:, :, :T, :]
        x = torch.cat((cached_left_pad, x), dim=2)
        new_left_pad = x[:, :, T:T + pad_t, :]
        x = F.conv2d(x, self.depthwise_conv.weight, self.depthwise_conv.bias, padding=(0, pad_f),
                     groups=self.depthwise_conv.groups)
        x = swoosh_l(self.pointwise_conv1(x))
        return bypass + self.pointwise_conv2(x), new_left_pad


class Conv2dSubsampling(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8, layer2_channels: int = 32,
                 layer3_channels: int = 128, dropout: FloatLike = 0.1):
        super().__init__()
        if in_channels < 7:
            raise ValueError(f"Conv2dSubsampling: in_channels={in_channels} must be >= 7")
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, kernel_size=(7, 7))
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
                                 prob=(0.025, 0.25), grad_scale=0.02)
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """x (N, T, F), T >= 9 -> ((N, (T-7)//2, D0), (x_lens-7)//2)."""
        c = self.conv  # conv, ScaleGrad, Balancer, SwooshR, conv, Balancer, SwooshR, conv, Balancer, SwooshR
        first = c[0]  # through ops.traced_conv (under torch.compile its gradient is one opaque node)
        x = c[2](c[1](conv(x.unsqueeze(1), first.weight, first.bias, first.stride, first.padding, first.groups)))
        # Each SwooshR runs with the conv after it (conv_chain: the fused path recomputes the
        # activation in backward instead of storing it); the last one opens the ConvNeXt block.
        x = c[5](conv_chain(x, [("swoosh", "SwooshR"), ("conv", _conv_spec(c[4]))]))
        x = c[8](conv_chain(x, [("swoosh", "SwooshR"), ("conv", _conv_spec(c[7]))]))
        x = self.convnext(x, input_activation="SwooshR")
        b, c, t, f = x.shape
        x = x.transpose(1, 2).reshape(b, t, c * f)   # channel-major features
        x = self.out_norm(self.out_whiten(self.out(x)))
        x = self.dropout(x)
        return x, (x_lens - 7) // 2

    def get_init_states(self, batch_size: int = 1, device: torch.device = torch.device("cpu")) -> Tensor:
        """The ConvNeXt block's cached left pad, zeros of shape (batch_size, layer3_channels, 3, out_width)
        (icefall Conv2dSubsampling.get_init_states: (B, 128, 3, 19) for 80-dim features)."""
        dtype = self.out.weight.dtype
        return torch.zeros(batch_size, self.layer3_channels, self.convnext.padding[0], self.out_width,
                           dtype=dtype, device=device)

    def streaming_forward(self, x: Tensor, x_lens: Tensor, cached_left_pad: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One chunk (icefall Conv2dSubsampling.streaming_forward), eval semantics: x (N, T, F) with
        T = 2 * chunk + 13 (7 frames for the convolutions, 2 * 3 of look-ahead for ConvNeXt) ->
        ((N, (T-7)//2 - 3, D0), x_lens' = (x_lens - 7)//2 - 3, new cached_left_pad). x_lens' may be
        negative for a stream's padded last chunk, as in icefall."""
        N, T, F_in = x.shape
        if (((F_in - 1) // 2) - 1) // 2 != self.out_width:
            raise ValueError(f"Conv2dSubsampling.streaming_forward: features have {F_in} channels, which Conv-Embed "
                             f"reduces to {(((F_in - 1) // 2) - 1) // 2} frequencies; this model has {self.out_width} "
                             f"(80-dim fbank gives 19)")
        if T < 7 + 2 * self.convnext.padding[0] + 2:
            raise ValueError(f"Conv2dSubsampling.streaming_forward: {T} frames; a chunk needs at least "
                             f"{7 + 2 * self.convnext.padding[0] + 2} (7 + 2 * 3 of look-ahead + 2 per output frame)")
        x = self.conv(x.unsqueeze(1))
        x, cached_left_pad = self.convnext.streaming_forward(x, cached_left_pad)
        b, c, t, f = x.shape
        x = self.out_norm(self.out(x.transpose(1, 2).reshape(b, t, c * f)))
        return x, (x_lens - 7) // 2 - self.convnext.padding[0], cached_left_pad
