"""The ops the architecture calls, one per module: its formula, the pure-PyTorch reference, and
(where a fused kernel exists) the custom op, the autograd formula and the dispatch between them
(zipformer_fast.backend.use_triton_for). nn/ modules call these functions for the hot paths,
imported from their modules: `from zipformer_fast.ops.bias_norm import bias_norm`.

activation_linear  SwooshL/R + dropout + Linear, Linear + SwooshL
attention          the shared attention weights and their uses (attention_fused: its Triton path)
balancer           icefall's Balancer gradient edit, shared by ops that recompute their input
bias_norm          BiasNorm
bypass             the bypass blend, BiasNorm + bypass, upsample + bypass
conv_chain         Conv-Embed's conv/Swoosh chain, recomputed in backward
downsample         SimpleDownsample / SimpleUpsample / channel conversion
gated_conv         the convolution module's GLU + depthwise conv
gating             tanh gate and the gated output projection of non-linear attention
mutual_information the RNN-T lattice recursion behind every transducer loss
streaming_attention attention of one chunk against cached keys
swoosh             SwooshL / SwooshR
"""
