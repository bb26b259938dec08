"""SimpleDownsample / SimpleUpsample between Zipformer stacks, and channel truncation/padding.

- simple_downsample(x (T,B,C), bias (ds,)): right-pad T to a multiple of ds by repeating the last
  frame of the padded batch tensor, then a softmax(bias)-weighted sum over each group of ds frames
  -> (ceil(T/ds), B, C).
- simple_upsample(x (T',B,C), ds, T): repeat every frame ds times, keep the first T.
- convert_num_channels(x, D): keep the first D channels, or append zeros up to D.
"""
from __future__ import annotations

import torch
from torch import Tensor


def simple_downsample_reference(x: Tensor, bias: Tensor) -> Tensor:
    ds = bias.shape[0]
    T, B, C = x.shape
    d_T = (T + ds - 1) // ds
    pad = d_T * ds - T
    if pad > 0:
        x = torch.cat((x, x[-1:].expand(pad, B, C)), dim=0)
    weights = bias.softmax(dim=0).unsqueeze(-1).unsqueeze(-1)  # (ds, 1, 1)
    return (x.reshape(d_T, ds, B, C) * weights).sum(dim=1)


def simple_upsample_reference(x: Tensor, ds: int, length: int) -> Tensor:
    Td, B, C = x.shape
    return x.unsqueeze(1).expand(Td, ds, B, C).reshape(Td * ds, B, C)[:length]


def convert_num_channels_reference(x: Tensor, num_channels: int) -> Tensor:
    if num_channels <= x.shape[-1]:
        return x[..., :num_channels]
    shape = list(x.shape)
    shape[-1] = num_channels - shape[-1]
    return torch.cat((x, torch.zeros(shape, dtype=x.dtype, device=x.device)), dim=-1)


def simple_downsample(x: Tensor, bias: Tensor) -> Tensor:
    return simple_downsample_reference(x, bias)


def simple_upsample(x: Tensor, ds: int, length: int) -> Tensor:
    return simple_upsample_reference(x, ds, length)


def convert_num_channels(x: Tensor, num_channels: int) -> Tensor:
    return convert_num_channels_reference(x, num_channels)
