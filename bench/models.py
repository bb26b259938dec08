"""The models the benchmarks compare, by name.

Names are "<family>-<size>[-<head>]": zipformer-S/M/L (pruned transducer, Table 2),
zipformer-S/M/L-ctc (Table 8's CTC rows), conformer-S/M/L (Table 2's reproduced Conformers, our
own clean implementation in bench/baselines/), and the tiny zipformer-XS / conformer-XS that smoke
tests use. Every model exposes `forward_encoder(features, lens)`. The paper's numbers for them are
in bench/paper.py.
"""
from __future__ import annotations

from typing import Optional

import torch

FIGURE3_MODELS = ("zipformer-S", "zipformer-M", "zipformer-L", "conformer-S", "conformer-M", "conformer-L")
VOCAB_SIZE = 500  # icefall's LibriSpeech BPE vocabulary, which the paper's parameter counts assume


def parse_name(name: str):
    """'zipformer-L-ctc' -> ('zipformer', 'L', 'ctc'); raises ValueError for unknown names."""
    parts = name.split("-")
    if len(parts) not in (2, 3) or parts[0] not in ("zipformer", "conformer"):
        raise ValueError(f"model {name!r}: expected zipformer-<S|M|L|XS>[-ctc] or conformer-<S|M|L|XS>")
    family, size = parts[0], parts[1].upper()
    head = parts[2] if len(parts) == 3 else "transducer"
    if size not in ("XS", "S", "M", "L"):
        raise ValueError(f"model {name!r}: size must be XS, S, M or L")
    if head not in ("transducer", "ctc") or (family == "conformer" and head != "transducer"):
        raise ValueError(f"model {name!r}: unknown head {head!r}")
    return family, size, head


def build_model(name: str, device: Optional[torch.device] = None) -> torch.nn.Module:
    """A freshly initialised model (eval mode) on `device` (the meta device works too)."""
    family, size, head = parse_name(name)
    device = torch.device(device or "cpu")
    # Built on the meta device directly (no memory), otherwise on CPU and then moved, so that no
    # constructor has to honour a default-device context.
    with torch.device("meta" if device.type == "meta" else "cpu"):
        if family == "zipformer":
            from zipformer_fast import AsrModel, ZipformerConfig
            cfg = ZipformerConfig.preset(size)
            vocab = cfg.vocab_size if size == "XS" else VOCAB_SIZE
            # Input validation syncs with the host once per call: off, as in a timed inference loop.
            model = AsrModel(cfg, vocab_size=vocab, use_transducer=head == "transducer",
                             use_ctc=head == "ctc", validate_inputs=False)
        else:
            from bench.baselines import ConformerAsrModel, ConformerConfig
            model = ConformerAsrModel(ConformerConfig.preset(size))
    return model.to(device).eval()
