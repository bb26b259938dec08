"""The runtime switchboard: which implementation runs, and the one place environment variables are read.

    import zipformer_fast
    zipformer_fast.configure(backend="reference")              # the process default from here on
    with zipformer_fast.configure(attention_mode="recompute"):  # only inside the block
        ...

| setting          | values                              | environment variable          | default |
|------------------|-------------------------------------|-------------------------------|---------|
| `backend`        | auto, triton, reference             | ZIPFORMER_FAST_BACKEND        | auto    |
| `attention_mode` | auto, recompute, materialize        | ZIPFORMER_FAST_ATTENTION_MODE | auto    |
| `k2`             | False, True                         | ZIPFORMER_FAST_USE_K2 (0/1)   | False   |
| (build)          | skip the compiled ScaledAdam step   | ZIPFORMER_FAST_NO_EXTENSION=1 | unset   |
| (build)          | show the extension's compiler output| ZIPFORMER_FAST_VERBOSE_BUILD=1| unset   |
| (Triton)         | run kernels in Triton's interpreter | TRITON_INTERPRET=1            | unset   |

backend: "auto" runs the Triton kernels on CUDA tensors when triton imports (on CPU tensors only
under TRITON_INTERPRET=1) and PyTorch elsewhere;
"triton" insists (an error when triton is missing; CPU tensors then need TRITON_INTERPRET=1);
"reference" runs the pure-PyTorch twin of every op. attention_mode: how the fused attention keeps
its weights (ops/attention.py). k2: route the RNN-T lattice recursion to an installed k2.

The environment is read when a setting is first needed (and again after `read_environment()`);
`configure` overrides it for the process, or for a `with` block, restoring what was there before
on exit. The settings are process-wide (not per thread): a `with` block in one thread is seen by
the others.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

BACKENDS = ("auto", "triton", "reference")
ATTENTION_MODES = ("auto", "recompute", "materialize")


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str = "auto"
    attention_mode: str = "auto"
    k2: bool = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").strip() == "1"


def _choice(name: str, allowed, default: str) -> str:
    value = os.environ.get(name, default).strip().lower()
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: expected one of {allowed}")
    return value


def _from_environment() -> Settings:
    return Settings(backend=_choice("ZIPFORMER_FAST_BACKEND", BACKENDS, "auto"),
                    attention_mode=_choice("ZIPFORMER_FAST_ATTENTION_MODE", ATTENTION_MODES, "auto"),
                    k2=_flag("ZIPFORMER_FAST_USE_K2"))


_environment: Optional[Settings] = None   # what the environment said
_overrides: dict = {}                     # what configure() set, on top of it
# The two merged; every fused op asks. Always a Settings, never None: a lazily filled cache would
# make torch.compile guard on "still None" in the first compiled call and recompile on the second.
_current: Optional[Settings] = None


def _merge() -> None:
    global _current
    _current = dataclasses.replace(_environment, **_overrides) if _overrides else _environment


def read_environment() -> Settings:
    """Re-read the environment variables (after changing os.environ in a running process)."""
    global _environment, _interpret
    _environment = _from_environment()
    _interpret = _flag("TRITON_INTERPRET")
    _merge()
    return _environment


def settings() -> Settings:
    """The settings in force now."""
    return _current


def _set_overrides(overrides: dict) -> None:
    _overrides.clear()
    _overrides.update(overrides)
    _merge()


def get_backend() -> str:
    return settings().backend


def get_attention_mode() -> str:
    return settings().attention_mode


def k2_enabled() -> bool:
    return settings().k2


def extension_disabled() -> bool:
    """ZIPFORMER_FAST_NO_EXTENSION=1: the optimizer uses its torch._foreach path, nothing is compiled."""
    return _flag("ZIPFORMER_FAST_NO_EXTENSION")


def verbose_build() -> bool:
    return _flag("ZIPFORMER_FAST_VERBOSE_BUILD")


_interpret: bool = False  # every fused call on CPU tensors asks; set by read_environment()


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1: Triton runs kernels on CPU tensors in its interpreter (how CI tests them).
    Read at import (and again by read_environment()): Triton itself decides interpreter-or-not
    when a kernel is decorated, so a later change of the variable would not reach the kernels
    anyway. Never a lazily filled cache: torch.compile would guard on "not read yet" in its first
    compiled call and recompile on the second."""
    return _interpret


_triton_imports: Optional[bool] = None  # a plain global, not lru_cache: dynamo traces through it quietly


def triton_available() -> bool:
    global _triton_imports
    if _triton_imports is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
            _triton_imports = True
        except Exception:
            _triton_imports = False
    return _triton_imports


class configure:
    """Set the backend, the attention mode and k2 use; None leaves a setting as it is.

    Called plainly it changes the process default; used as `with configure(...):` it also restores
    the previous settings when the block ends (like torch.set_grad_enabled).
    """

    def __init__(self, backend: Optional[str] = None, attention_mode: Optional[str] = None,
                 k2: Optional[bool] = None):
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
        if attention_mode is not None and attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode {attention_mode!r}: expected one of {ATTENTION_MODES}")
        if backend == "triton" and not triton_available():
            raise RuntimeError("backend 'triton' requested but triton is not importable: pip install triton")
        if k2 and not _k2_importable():
            raise ImportError("k2=True but k2 does not import; leave k2 off to use the built-in recursion")
        changes = {name: value for name, value in
                   (("backend", backend), ("attention_mode", attention_mode), ("k2", k2)) if value is not None}
        self._previous = dict(_overrides)
        _set_overrides({**_overrides, **{name: (bool(v) if name == "k2" else v) for name, v in changes.items()}})

    def __enter__(self) -> Settings:
        return settings()

    def __exit__(self, *exc) -> None:
        _set_overrides(self._previous)


def use_backend(name: str) -> configure:
    """Shorthand for `configure(backend=name)`, mostly used as `with use_backend("reference"):`."""
    return configure(backend=name)


def _k2_importable() -> bool:
    try:
        import k2  # noqa: F401
    except Exception:
        return False
    return True


read_environment()
