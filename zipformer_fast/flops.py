"""Encoder FLOPs (Conv-Embed + Zipformer2) for one utterance, counted like the paper's Table 2.

torch.utils.flop_counter.FlopCounterMode counts matmuls / convolutions / attention at 2 FLOPs per
multiply-add (elementwise ops are not counted). The model is built and run on the "meta" device, so
no memory is allocated and no arithmetic happens: counting M at 3000 frames takes seconds. The
reference ops are forced (fused kernels are opaque to the counter).

Measured: S 40.6, M 62.8, L 107.5 GFLOPs for a 30 s utterance (3000 frames), equal to icefall's
FlopCounter numbers (the paper's DeepSpeed numbers: 40.8 / 62.9 / 107.7).
"""
from __future__ import annotations

from typing import Optional

import torch

from .runtime import use_backend
from .config import ZipformerConfig

PAPER_GFLOPS_DEEPSPEED = {"S": 40.8, "M": 62.9, "L": 107.7}
ICEFALL_GFLOPS_FLOPCOUNTER = {"S": 40.6, "M": 62.8, "L": 107.5}


def encoder_flops(config: ZipformerConfig, num_frames: int = 3000, batch_size: int = 1,
                  model: Optional[torch.nn.Module] = None) -> int:
    """FLOPs of AsrModel.forward_encoder on `batch_size` utterances of `num_frames` 100 Hz frames.

    `model`: an AsrModel to count (any device; it is moved to nothing -- pass one built on meta to
    avoid allocation); default: a fresh transducer model of `config` built on the meta device.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .asr.model import AsrModel
    if num_frames < 9:
        raise ValueError(f"num_frames={num_frames}: Conv-Embed needs at least 9 frames")
    if model is None:
        with torch.device("meta"):
            model = AsrModel(config)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(batch_size, num_frames, config.feature_dim, device=device)
    lens = torch.full((batch_size,), num_frames, dtype=torch.int64, device=device)
    try:
        with use_backend("reference"), torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.forward_encoder(x, lens)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
