"""The runtime switchboard (zipformer_fast.configure): one call sets the process default, the same
call as a `with` block restores what was there before, bad values fail at the call, and the
environment variables are the defaults."""
import pytest

import zipformer_fast
from zipformer_fast import configure, runtime, settings


def test_plain_call_sets_the_process_default_and_with_restores_it():
    before = settings()
    with configure(backend="reference"):
        assert settings().backend == "reference"
        configure(attention_mode="recompute")              # a plain call inside a block...
        assert settings() == runtime.Settings("reference", "recompute", before.k2)
        with configure(attention_mode="materialize"):
            assert settings().attention_mode == "materialize"
            assert settings().backend == "reference"       # None leaves a setting alone
        assert settings().attention_mode == "recompute"
    assert settings() == before                           # ...is undone with the block it is in


def test_use_backend_is_configure_backend():
    with zipformer_fast.use_backend("reference"):
        assert zipformer_fast.get_backend() == "reference"


def test_bad_values_fail_at_the_call_naming_the_setting():
    with pytest.raises(ValueError, match="backend 'fast'"):
        configure(backend="fast")
    with pytest.raises(ValueError, match="attention mode 'sometimes'"):
        configure(attention_mode="sometimes")
    assert settings() == runtime.read_environment()


def test_environment_variables_are_the_defaults(monkeypatch):
    monkeypatch.setenv("ZIPFORMER_FAST_BACKEND", "reference")
    monkeypatch.setenv("ZIPFORMER_FAST_ATTENTION_MODE", "Recompute")
    try:
        assert runtime.read_environment() == runtime.Settings("reference", "recompute", False)
        with configure(backend="auto"):                   # configure wins over the environment
            assert settings().backend == "auto"
        monkeypatch.setenv("ZIPFORMER_FAST_ATTENTION_MODE", "fast")
        with pytest.raises(ValueError, match="ZIPFORMER_FAST_ATTENTION_MODE='fast'"):
            runtime.read_environment()
    finally:
        monkeypatch.undo()
        runtime.read_environment()


def test_environment_is_read_only_in_runtime():
    """Every other module asks zipformer_fast.runtime; no os.environ / os.getenv elsewhere in the
    package or the kernels."""
    import pathlib
    import re

    repo = pathlib.Path(zipformer_fast.__file__).resolve().parents[1]
    offenders = []
    for folder in ("zipformer_fast", "kernels"):
        for path in (repo / folder).rglob("*.py"):
            if path.name == "runtime.py":
                continue
            if re.search(r"os\.environ|os\.getenv|getenv\(", path.read_text()):
                offenders.append(str(path.relative_to(repo)))
    assert offenders == []
