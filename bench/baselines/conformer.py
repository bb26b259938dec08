"""A plain Conformer encoder (Gulati et al., 2020), icefall-style: the baseline of Figure 3 / Table 2.

Layout, top to bottom:
    features (B, T, 80)
    -> Conv2dSubsampling: Conv2d(1->d, 3x3, stride 2) ReLU Conv2d(d->d, 3x3, stride 2) ReLU,
       Linear(d * 19 -> d); T' = ((T - 1) // 2 - 1) // 2 (4x, 100 Hz -> 25 Hz)
    -> x * sqrt(d), relative positional encoding of the 2T'-1 offsets (Transformer-XL style)
    -> N x ConformerLayer (pre-LayerNorm, macaron):
           x += 1/2 FF(LN(x));  x += RelPosMHSA(LN(x));  x += Conv(LN(x));  x += 1/2 FF(LN(x));
           x = LN(x)
       FF = Linear(d->ff) Swish Dropout Linear(ff->d); Conv = pointwise(d->2d) GLU depthwise(K)
       BatchNorm Swish pointwise(d->d)
    -> LayerNorm -> (B, T', d)

The sizes of the presets are those of the paper's reproduced Conformers (Table 2 rows
"Conformer-S/M/L, pruned transducer"): with icefall's transducer heads (vocab 500, decoder and
joiner dim 512) their parameters and encoder FLOPs for one 30 s utterance (2 FLOPs per
multiply-add of every matmul and convolution, as DeepSpeed counts) are within 1 % of the paper's
(bench/paper.py; bench/table2.py measures them, recorded in bench/results/table2.md).

Attention is written with explicit matmuls (no fused SDPA), as in icefall's Conformer that the
paper timed: the relative-position term needs a (T, 2T-1) score matrix that flash kernels do not
take. Everything is shape-only (no .item(), no data-dependent control flow), so the model also
runs on the meta device, which is how tests count its FLOPs for 30 s inputs at no cost.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class ConformerConfig:
    feature_dim: int = 80
    d_model: int = 256
    num_layers: int = 16
    num_heads: int = 4
    feedforward_dim: int = 1024
    cnn_module_kernel: int = 31
    dropout: float = 0.1
    # Transducer heads (icefall's stateless decoder + joiner), used by ConformerAsrModel.
    vocab_size: int = 500
    decoder_dim: int = 512
    joiner_dim: int = 512
    context_size: int = 2

    def __post_init__(self):
        self.validate()

    @classmethod
    def preset(cls, name: str, **overrides) -> "ConformerConfig":
        """The paper's reproduced Conformer-S / M / L, or a tiny "XS" for tests."""
        key = name.upper()
        if key not in CONFORMER_PRESETS:
            raise ValueError(f"Conformer preset {name!r}: expected one of {sorted(CONFORMER_PRESETS)}")
        kwargs = dict(CONFORMER_PRESETS[key])
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **changes) -> "ConformerConfig":
        return dataclasses.replace(self, **changes)

    @property
    def output_dim(self) -> int:
        return self.d_model

    def validate(self) -> None:
        for name in ("feature_dim", "d_model", "num_layers", "num_heads", "feedforward_dim",
                     "cnn_module_kernel", "vocab_size", "decoder_dim", "joiner_dim", "context_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)}: must be positive")
        if self.d_model % self.num_heads != 0:
            raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
        if self.cnn_module_kernel % 2 != 1:
            raise ValueError(f"cnn_module_kernel={self.cnn_module_kernel}: must be odd (symmetric padding)")
        if self.feature_dim < 7:
            raise ValueError(f"feature_dim={self.feature_dim}: two stride-2 3x3 convolutions need >= 7 bins")
        if self.decoder_dim % 4 != 0:
            raise ValueError(f"decoder_dim={self.decoder_dim}: must be a multiple of 4 (decoder conv groups of 4)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")


CONFORMER_PRESETS = {
    "S": dict(d_model=144, num_layers=16, num_heads=4, feedforward_dim=576),
    "M": dict(d_model=256, num_layers=16, num_heads=4, feedforward_dim=1024),
    "L": dict(d_model=512, num_layers=18, num_heads=8, feedforward_dim=2048),
    "XS": dict(d_model=32, num_layers=2, num_heads=2, feedforward_dim=64, cnn_module_kernel=7,
               vocab_size=16, decoder_dim=32, joiner_dim=32),
}


def subsampled_lengths(lengths: Tensor) -> Tensor:
    """Frames left after Conv2dSubsampling: two unpadded 3x3 stride-2 convolutions."""
    return ((lengths - 1) // 2 - 1) // 2


class Conv2dSubsampling(nn.Module):
    """4x time subsampling with d-channel convolutions (the original Conformer front end).

    The second convolution (d x d x 3 x 3 over T/2 x 19 positions) is the costliest single op of
    the Conformer-L (about 13% of its FLOPs): kept, because the paper's FLOPs include it.
    """

    def __init__(self, feature_dim: int, d_model: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, d_model, kernel_size=3, stride=2), nn.ReLU(),
            nn.Conv2d(d_model, d_model, kernel_size=3, stride=2), nn.ReLU(),
        )
        freq = ((feature_dim - 1) // 2 - 1) // 2
        self.out = nn.Linear(d_model * freq, d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.unsqueeze(1))                    # (B, d, T', F')
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


def relative_positional_encoding(t: int, d_model: int, device, dtype) -> Tensor:
    """Sinusoidal embeddings of the offsets (t-1), (t-2), ..., -(t-1): shape (2t-1, d_model).

    Row n holds offset (t-1) - n, so query i and key j meet at row (t-1) - i + j (see rel_shift).
    """
    offsets = torch.arange(t - 1, -t, -1, device=device, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, device=device, dtype=torch.float32)
                         * (-math.log(10000.0) / d_model))
    angles = offsets * inv_freq
    pe = torch.stack([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(2 * t - 1, d_model)
    return pe.to(dtype)


def rel_shift(scores: Tensor) -> Tensor:
    """(..., T, 2T-1) scores against offset rows -> (..., T, T) with out[i, j] = scores[i, T-1-i+j].

    A strided view, no copy: moving one query row down moves the window one column left, so the
    row stride is (2T-1) - 1. Needs the last two dims contiguous (a fresh matmul result is).
    """
    *lead, t, two_t_minus_1 = scores.shape
    if two_t_minus_1 != 2 * t - 1:
        raise ValueError(f"rel_shift: expected last dim 2T-1={2 * t - 1}, got {two_t_minus_1}")
    scores = scores.contiguous()
    strides = list(scores.stride())
    return scores.as_strided(
        (*lead, t, t), (*strides[:-2], strides[-2] - 1, 1),
        storage_offset=scores.storage_offset() + (t - 1),
    )


class RelPositionMultiheadAttention(nn.Module):
    """Transformer-XL self-attention: scores = ((q+u) k^T + rel_shift((q+v) p^T)) / sqrt(dh)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Tensor) -> Tensor:
        b, t, d = x.shape
        h, dh = self.num_heads, self.head_dim
        q, k, v = self.in_proj(x).view(b, t, 3, h, dh).unbind(dim=2)      # each (B, T, H, dh)
        p = self.linear_pos(pos_emb).view(2 * t - 1, h, dh)
        k = k.permute(0, 2, 3, 1)                                          # (B, H, dh, T)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k)    # (B, H, T, T)
        position = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.permute(1, 2, 0))
        scores = (content + rel_shift(position)) * (dh ** -0.5)
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        # Softmax in fp32: half-precision row sums over ~750 keys lose digits.
        weights = self.dropout(torch.softmax(scores.float(), dim=-1).to(v.dtype))
        out = torch.matmul(weights, v.transpose(1, 2))                      # (B, H, T, dh)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_model, hidden), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, d_model))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvolutionModule(nn.Module):
    """pointwise(d->2d) GLU depthwise(K) BatchNorm Swish pointwise(d->d), on (B, T, d)."""

    def __init__(self, d_model: int, kernel_size: int):
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel_size, padding=kernel_size // 2,
                                        groups=d_model)
        self.norm = nn.BatchNorm1d(d_model)
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: Tensor, key_padding_mask: Tensor) -> Tensor:
        x = nn.functional.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)
        # Padding frames must not leak into valid ones through the depthwise kernel.
        x = x.masked_fill(key_padding_mask[:, None, :], 0.0)
        x = nn.functional.silu(self.norm(self.depthwise_conv(x)))
        return self.pointwise_conv2(x).transpose(1, 2)


class ConformerLayer(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d = cfg.d_model
        self.ff_macaron = FeedForward(d, cfg.feedforward_dim, cfg.dropout)
        self.self_attn = RelPositionMultiheadAttention(d, cfg.num_heads, cfg.dropout)
        self.conv_module = ConvolutionModule(d, cfg.cnn_module_kernel)
        self.feed_forward = FeedForward(d, cfg.feedforward_dim, cfg.dropout)
        self.norm_ff_macaron, self.norm_mha, self.norm_conv, self.norm_ff, self.norm_final = (
            nn.LayerNorm(d) for _ in range(5))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos_emb: Tensor, key_padding_mask: Tensor) -> Tensor:
        x = x + 0.5 * self.dropout(self.ff_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos_emb, key_padding_mask))
        x = x + self.dropout(self.conv_module(self.norm_conv(x), key_padding_mask))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    """features (B, T, F), lengths (B,) -> (B, T', d), lengths' (the encoder_embed + encoder)."""

    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder_embed = Conv2dSubsampling(cfg.feature_dim, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(cfg.d_model)

    def forward(self, features: Tensor, feature_lens: Tensor):
        if features.dim() != 3 or features.shape[-1] != self.cfg.feature_dim:
            raise ValueError(f"features: expected (B, T, {self.cfg.feature_dim}), got {tuple(features.shape)}")
        if features.shape[1] < 7:
            raise ValueError(f"features: T={features.shape[1]} frames; 4x subsampling needs at least 7")
        x = self.encoder_embed(features)
        b, t, d = x.shape
        lens = subsampled_lengths(feature_lens)
        key_padding_mask = torch.arange(t, device=x.device)[None, :] >= lens[:, None]
        pos_emb = self.dropout(relative_positional_encoding(t, d, x.device, x.dtype))
        x = self.dropout(x * math.sqrt(d))
        for layer in self.layers:
            x = layer(x, pos_emb, key_padding_mask)
        return self.norm_out(x), lens
