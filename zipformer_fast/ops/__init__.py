"""The ops the architecture calls. Each file holds one op: its formula, the pure-PyTorch reference,
and (where a fused kernel exists) the autograd.Function and the dispatch between them, chosen by
`zipformer_fast.backend`. nn/ modules call only these functions for the hot paths."""
from .activation_linear import activation_dropout_linear, linear_swoosh, make_dropout_mask
from .attention import attention_apply, attention_head0, attention_weights, constant_attention
from .bias_norm import bias_norm
from .bypass import bias_norm_bypass, bypass, upsample_bypass
from .conv_chain import conv_chain
from .downsample import convert_num_channels, simple_downsample, simple_upsample
from .gated_conv import gated_depthwise_conv1d
from .gating import mul_linear, tanh_gate
from .swoosh import swoosh_l, swoosh_r

__all__ = [
    "activation_dropout_linear", "make_dropout_mask", "attention_apply", "attention_head0",
    "attention_weights", "constant_attention", "bias_norm", "bypass", "convert_num_channels",
    "simple_downsample", "simple_upsample", "swoosh_l", "swoosh_r", "linear_swoosh", "upsample_bypass",
    "bias_norm_bypass", "conv_chain", "gated_depthwise_conv1d", "mul_linear", "tanh_gate",
]
