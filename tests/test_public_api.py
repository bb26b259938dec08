"""The public API: every package's `__all__` resolves, the recipes import only public names
(`from zipformer_fast.<package> import <name in its __all__>`, never a private submodule), and
importing the API packages stays cheap (no lhotse, sentencepiece or onnx until used)."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["zipformer_fast", "zipformer_fast.asr", "zipformer_fast.data", "zipformer_fast.optim",
            "zipformer_fast.export", "zipformer_fast.compat", "zipformer_fast.nn"]


def zipformer_imports(path: Path):
    """(line, module, names) of every zipformer_fast import in a file; names None for `import m`."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module.split(".")[0] == "zipformer_fast":
            yield node.lineno, node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "zipformer_fast":
                    yield node.lineno, a.name, None


def is_package(module) -> bool:
    return hasattr(module, "__path__")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    mod = importlib.import_module(package)
    assert is_package(mod) and mod.__all__, package
    assert len(set(mod.__all__)) == len(mod.__all__), package
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"


def test_recipes_import_only_public_names():
    files = sorted((ROOT / "recipes").rglob("*.py"))
    assert len(files) > 10
    checked, bad = 0, []
    for path in files:
        for line, module, names in zipformer_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            mod = importlib.import_module(module)
            if not is_package(mod):
                bad.append(f"{where}: {module} is a module, not a package's public API")
                continue
            for name in names or []:
                checked += 1
                if name not in getattr(mod, "__all__", ()):
                    bad.append(f"{where}: {name} is not in {module}.__all__")
    assert not bad, "\n".join(bad)
    assert checked > 30  # the walk found the recipes' imports


def test_the_check_catches_a_private_import(tmp_path):
    f = tmp_path / "r.py"
    f.write_text("import zipformer_fast.asr.search\nfrom zipformer_fast.asr.model import AsrModel\n"
                 "def g():\n    from zipformer_fast.asr import decode\n")
    assert list(zipformer_imports(f)) == [(1, "zipformer_fast.asr.search", None),
                                          (2, "zipformer_fast.asr.model", ["AsrModel"]),
                                          (4, "zipformer_fast.asr", ["decode"])]
    assert not is_package(importlib.import_module("zipformer_fast.asr.model"))


def test_names_shared_with_a_submodule_stay_the_function():
    import zipformer_fast.asr
    import zipformer_fast.asr.transducer_loss  # noqa: F401  (loading the submodule must not rebind the name)
    from zipformer_fast.asr import transducer_loss
    assert callable(transducer_loss) and transducer_loss.__module__ == "zipformer_fast.asr.transducer_loss"
    from zipformer_fast.asr import decode
    from zipformer_fast.asr.search import decode as decode_there
    assert decode is decode_there


def test_importing_the_api_packages_needs_torch_only():
    code = ("import sys, zipformer_fast, zipformer_fast.asr, zipformer_fast.data, zipformer_fast.export, "
            "zipformer_fast.optim; from zipformer_fast.asr import AsrModel, decode, error_rate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lhotse', 'sentencepiece', 'onnx', 'onnxruntime', 'sherpa_onnx')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
