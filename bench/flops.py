"""Parameters and encoder FLOPs of a model, counted like the paper's Table 2.

`count_encoder_flops` runs `forward_encoder` (Conv-Embed + encoder) under torch's FlopCounterMode:
2 FLOPs per multiply-add of every matmul and convolution, nothing for element-wise ops (DeepSpeed,
which the paper used, counts matmuls and convolutions the same way and adds element-wise ops, a
fraction of a percent here). Built on the meta device, a model is counted with no memory and no
arithmetic: the 122 M-parameter Conformer-L at 30 s takes about a second. The reference ops are
forced: the fused kernels do the same arithmetic and cannot run on the meta device.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

FRAMES_PER_SECOND = 100  # 10 ms fbank frame shift


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_encoder_flops(model: torch.nn.Module, seconds: float = 30.0, batch: int = 1) -> int:
    """FLOPs of model.forward_encoder on `batch` utterances of `seconds` s of 80-dim fbank, on the
    model's device (the meta device works)."""
    import zipformer_fast

    device = next(model.parameters()).device
    frames = int(round(seconds * FRAMES_PER_SECOND))
    features = torch.zeros(batch, frames, 80, device=device)
    lens = torch.full((batch,), frames, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode(), \
                zipformer_fast.use_backend("reference"):
            model.forward_encoder(features, lens)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())
