"""Shared test models: icefall's state-dict layout files (tests/data/state_dict_<size>_<heads>.tsv:
key, shape, numel per entry in registration order), the check that a model's state dict equals
one, meta-device S/M/L models and a small XS model with every head."""
import pathlib

DATA = pathlib.Path(__file__).resolve().parent / "data"


def read_tsv(size: str, heads: str = "transducer_ctc"):
    """[(key, shape tuple, numel)] of icefall's model `size` with `heads` (transducer_ctc, ctc_aed)."""
    rows = []
    for line in (DATA / f"state_dict_{size}_{heads}.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, numel = line.split("\t")
        dims = () if shape in ("", "scalar") else tuple(int(d) for d in shape.split("x"))
        rows.append((key, dims, int(numel)))
    return rows


def assert_same_layout(model, rows) -> None:
    ours = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(k, s) for k, s, _ in rows]
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a == b, f"entry {i}: ours {a} vs icefall {b}"


def meta_asr_model(size: str, **heads):
    """icefall's preset `size` with vocab 500 and the given heads, built on the meta device (no
    memory, no arithmetic)."""
    import torch

    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig
    with torch.device("meta"):
        return AsrModel(ZipformerConfig.preset(size), vocab_size=500, **heads)


def xs_model_with_every_head(vocab_size: int, seed: int = 0):
    """A small real model for loss and decoding tests: the XS encoder with transducer, CTC and a
    one-layer 16-dim attention decoder, in eval mode."""
    import torch

    from zipformer_fast.asr.attention_decoder import AttentionDecoderConfig
    from zipformer_fast.asr.model import AsrModel
    from zipformer_fast.config import ZipformerConfig
    torch.manual_seed(seed)
    aed = AttentionDecoderConfig(decoder_dim=16, num_layers=1, attention_dim=16, num_heads=2, feedforward_dim=16)
    return AsrModel(ZipformerConfig.preset("XS"), vocab_size=vocab_size, use_transducer=True, use_ctc=True,
                    use_attention_decoder=True, attention_decoder_config=aed).eval()
