"""The Zipformer architecture as nn.Modules (icefall-exact names, shapes and behaviour).

Hot-path math goes through zipformer_fast.ops so fused kernels replace it without touching nn/.
"""
from .scheduled_float import FloatLike, ScheduledFloat, set_batch_count
from .grad_shapers import Balancer, ScaleGrad, Whiten, limit_param_value
from .dropout import Dropout2, Dropout3
from .activations import SwooshL, SwooshR
from .bias_norm import BiasNorm
from .bypass import BypassModule
from .linear import ActivationDropoutAndLinear, ScaledConv1d, ScaledConv2d, ScaledLinear
from .pos_encoding import CompactRelPositionalEncoding
from .attention import NonlinAttention, RelPositionMultiheadAttentionWeights, SelfAttention
from .feedforward import FeedforwardModule
from .convolution import ChunkCausalDepthwiseConv1d, ConvolutionModule
from .layer import Zipformer2EncoderLayer
from .encoder_stack import DownsampledZipformer2Encoder, SimpleDownsample, SimpleUpsample, Zipformer2Encoder
from .zipformer import Zipformer2, chunk_attention_mask
from .subsampling import Conv2dSubsampling, ConvNeXt

__all__ = [
    "FloatLike", "ScheduledFloat", "set_batch_count", "Balancer", "ScaleGrad", "Whiten", "limit_param_value",
    "Dropout2", "Dropout3", "SwooshL", "SwooshR", "BiasNorm", "BypassModule", "ActivationDropoutAndLinear",
    "ScaledConv1d", "ScaledConv2d", "ScaledLinear", "CompactRelPositionalEncoding", "NonlinAttention",
    "RelPositionMultiheadAttentionWeights", "SelfAttention", "FeedforwardModule", "ChunkCausalDepthwiseConv1d",
    "ConvolutionModule", "Zipformer2EncoderLayer", "DownsampledZipformer2Encoder", "SimpleDownsample",
    "SimpleUpsample", "Zipformer2Encoder", "Zipformer2", "chunk_attention_mask", "Conv2dSubsampling", "ConvNeXt",
]
