"""icefall's state-dict layout files (tests/data/state_dict_<size>_<heads>.tsv: key, shape, numel
per entry in registration order) and the check that a model's state dict equals one."""
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
