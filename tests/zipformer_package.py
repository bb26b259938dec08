"""The real `zipformer` PyPI package (0.1.3), for the drop-in tests (tests/test_compat_*.py).

Its metadata pins torch < 2.8, so it is never pip-installed: `pip download --no-deps` fetches the
wheel into a cache dir (env ZIPFORMER_FAST_TEST_CACHE, default ~/.cache/zipformer_fast/tests), and
`load_package_modules()` loads zipformer/modules/{scaling,zipformer,subsampling,optim}.py by path
under their own names, with shims for the only outside imports they make
(`zipformer.utils.torch_autocast`, `zipformer.utils.fix_random_seed`). The synthetic `zipformer*`
entries are removed from sys.modules again afterwards. K2_ONNX_EXPORT=1 keeps its Swoosh out of
torch.compile. Tests skip (with the pip error) ONLY when the download fails.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import pathlib
import subprocess
import sys
import types
import zipfile

import pytest
import torch

VERSION = "0.1.3"
CACHE = pathlib.Path(os.environ.get("ZIPFORMER_FAST_TEST_CACHE",
                                    pathlib.Path.home() / ".cache" / "zipformer_fast" / "tests"))
MODULES = ("scaling", "zipformer", "subsampling", "optim")

# golden_XS.pt's configuration (tests/data/README.md; ZipformerConfig.preset("XS")).
XS = dict(output_downsampling_factor=2, downsampling_factor=(1, 2, 4, 8, 4, 2), num_encoder_layers=(1,) * 6,
          encoder_dim=(64, 80, 96, 128, 96, 80), encoder_unmasked_dim=(48, 48, 64, 64, 64, 48),
          query_head_dim=(16,), pos_head_dim=(4,), value_head_dim=(8,), pos_dim=16, num_heads=(2, 2, 2, 4, 2, 2),
          feedforward_dim=(96, 128, 160, 192, 160, 128), cnn_module_kernel=(15, 15, 7, 7, 7, 15),
          warmup_batches=4000.0, causal=False, chunk_size=(-1,), left_context_frames=(-1,))


def wheel_path() -> pathlib.Path:
    found = sorted(CACHE.glob(f"zipformer-{VERSION}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"zipformer=={VERSION}", "--no-deps", "--quiet",
           "-d", str(CACHE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not download the zipformer {VERSION} wheel: {e}")
    found = sorted(CACHE.glob(f"zipformer-{VERSION}-*.whl"))
    if proc.returncode != 0 or not found:
        pytest.skip(f"could not download the zipformer {VERSION} wheel: {proc.stderr.strip()[-500:]}")
    return found[0]


def _shim_utils() -> types.ModuleType:
    utils = types.ModuleType("zipformer.utils")

    @contextlib.contextmanager
    def torch_autocast(device_type="cuda", **kwargs):
        with torch.amp.autocast(device_type=device_type, **kwargs):
            yield

    def fix_random_seed(seed):
        import random
        random.seed(seed)
        torch.manual_seed(seed)

    utils.torch_autocast = torch_autocast
    utils.fix_random_seed = fix_random_seed
    return utils


def load_package_modules() -> dict:
    """{name: module} for zipformer/modules/{scaling,zipformer,subsampling,optim}.py of the wheel."""
    os.environ["K2_ONNX_EXPORT"] = "1"
    with zipfile.ZipFile(wheel_path()) as zf:
        sources = {m: zf.read(f"zipformer/modules/{m}.py").decode() for m in MODULES}
    root = CACHE / f"zipformer-{VERSION}-src"
    root.mkdir(exist_ok=True)
    for name, text in sources.items():
        path = root / f"{name}.py"
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    saved = {k: v for k, v in sys.modules.items() if k == "zipformer" or k.startswith("zipformer.")}
    for k in saved:
        del sys.modules[k]
    pkg, sub = types.ModuleType("zipformer"), types.ModuleType("zipformer.modules")
    pkg.__path__, sub.__path__ = [], []
    sys.modules.update({"zipformer": pkg, "zipformer.utils": _shim_utils(), "zipformer.modules": sub})
    try:
        out = {}
        for name in MODULES:
            spec = importlib.util.spec_from_file_location(f"zipformer.modules.{name}", root / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
            out[name] = module
        return out
    finally:
        for k in [k for k in sys.modules if k == "zipformer" or k.startswith("zipformer.")]:
            del sys.modules[k]
        sys.modules.update(saved)


class TinyAsrModel(torch.nn.Module):
    """The encoder part of the package's AsrModel (its model.py needs `atdataset`, not on PyPI):
    same submodule names, same forward_encoder."""

    def __init__(self, encoder_embed, encoder):
        super().__init__()
        self.encoder_embed = encoder_embed
        self.encoder = encoder

    def forward_encoder(self, x, x_lens):
        x, x_lens = self.encoder_embed(x, x_lens)
        src_key_padding_mask = torch.arange(x.shape[1], device=x.device)[None] >= x_lens[:, None]
        out, out_lens = self.encoder(x.permute(1, 0, 2), x_lens, src_key_padding_mask)
        return out.permute(1, 0, 2), out_lens


def build_xs(pkg: dict, state_dict=None, causal: bool = False) -> TinyAsrModel:
    """The package's Zipformer-XS encoder (+ Conv-Embed) as icefall train.py builds it; causal=True
    gives the streaming variant (chunk 16, left context 64, as golden_XS_streaming.pt)."""
    sf = pkg["scaling"].ScheduledFloat
    config = dict(XS, causal=True, chunk_size=(16,), left_context_frames=(64,)) if causal else XS
    encoder = pkg["zipformer"].Zipformer(dropout=sf((0.0, 0.3), (20000.0, 0.1)), **config)
    embed = pkg["subsampling"].Conv2dSubsampling(in_channels=80, out_channels=64,
                                                 dropout=sf((0.0, 0.3), (20000.0, 0.1)))
    model = TinyAsrModel(embed, encoder)
    if state_dict is not None:
        model.load_state_dict({k: v for k, v in state_dict.items()
                               if k.startswith(("encoder.", "encoder_embed."))}, strict=True)
    return model


def make_gradient_shapers_deterministic(model: torch.nn.Module) -> None:
    """Every Balancer acts on every call and every Whiten checks its metric on every call (prob 1),
    so no Python-random draw decides a gradient edit: both implementations then apply exactly the
    same edits whatever order they draw random numbers in."""
    for m in list(model.modules()):
        kind = type(m).__name__
        if kind == "Balancer":
            m._modules.pop("prob", None)
            m.prob = 1.0
        elif kind == "Whiten":
            m.min_prob = m.max_prob = m.prob = 1.0
