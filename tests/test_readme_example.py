"""The README's "Using it from Python" example runs as written, on the tiny XS preset instead of M
(same code path, seconds instead of a minute on a CPU), with the PyTorch ops (conftest's
TRITON_INTERPRET would otherwise send "auto" to the Triton interpreter)."""
import pathlib
import re

from zipformer_fast import configure

REPO = pathlib.Path(__file__).resolve().parents[1]


def python_blocks(markdown: str):
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_the_training_and_decoding_example_runs():
    blocks = python_blocks((REPO / "README.md").read_text())
    example = next(b for b in blocks if "model(x, x_lens, y" in b)
    assert 'ZipformerConfig.preset("M")' in example
    code = example.replace('ZipformerConfig.preset("M")', 'ZipformerConfig.preset("XS")')
    code = code.replace("torch.randn(2, 1000, 80)", "torch.randn(2, 300, 80)")
    code = code.replace("torch.tensor([1000, 870])", "torch.tensor([300, 261])")
    scope = {}
    with configure(backend="reference"):
        exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["hyps"]) == 2 and all(isinstance(t, int) for h in scope["hyps"] for t in h)
    assert scope["encoder_out_ref"].shape == scope["encoder_out"].shape
