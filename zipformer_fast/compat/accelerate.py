"""Drop-in acceleration of models built by icefall or the `zipformer` package.

    model = zipformer_fast.accelerate(model)   # icefall AsrModel, or a bare Zipformer2 / Conv2dSubsampling
    ...train / decode as before...
    model = zipformer_fast.revert(model)       # the original modules back

`accelerate` replaces every icefall `Zipformer2` (package: `Zipformer`) and Zipformer-recipe
`Conv2dSubsampling` found in the module tree with zipformer_fast's modules built from the
configuration read off the originals (compat/peer_config.py). The new modules hold THE SAME
nn.Parameter objects (nothing is copied: an optimizer built before keeps working, state-dict keys
and parameter order are unchanged) and keep the caller's interface:
`encoder(x (T, N, C), x_lens, src_key_padding_mask) -> (out (T', N, C'), out_lens)` and
`encoder_embed(x (N, T, F), x_lens) -> (x, x_lens)`. Training state is carried over module by
module (matched by qualified name, which equals icefall's): train/eval flags, every ScheduledFloat
(schedule, default, batch_count, so icefall train.py's `set_batch_count` keeps driving dropout,
layer drop, Balancers and Whitens), float hyperparameters (Balancer limits, Whiten's current prob,
skip rates), `lr_scale` and `name`; integer and tuple fields must agree or AccelerateError names
them. Not carried: forward/backward hooks registered on the original submodules, and the
Balancers' CUDA-memory cutoff estimate (a running statistic, it re-converges).

`streaming_forward` / `get_init_states`: the accelerated module uses zipformer_fast's own methods
when its classes have them; otherwise it delegates to the original module, which still shares
every parameter (so it computes with the current weights).

`accelerate_classes(namespace, ...)` patches the peer classes found in a namespace (icefall's
`zipformer` / `subsampling` modules, the recipe's `train` module, which did `from zipformer import
Zipformer2`, ...) so that models built afterwards come out accelerated. The class objects
themselves get a `__new__`, so every namespace that refers to them is affected until `restore()`;
instances still report the accelerated classes, not the peer's, to isinstance.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

from torch import Tensor, nn

from ..runtime import BACKENDS, use_backend
from ..nn.scheduled_float import ScheduledFloat
from ..nn.subsampling import Conv2dSubsampling
from ..nn.zipformer import Zipformer2
from .peer_config import AccelerateError, embed_args, encoder_config, peer_kind

_ORIGINAL = "_zipformer_fast_original"
# Present on one side only, by design (implementation details): never compared.
_IGNORED_FIELDS = {"name", "batch_count", "store_output_for_backprop", "causal", "num_encoder_layers",
                   "training", "forced"}


# ----------------------------------------------------------------------------- wrapper modules
class _AcceleratedMixin:
    """What both accelerated classes add to zipformer_fast's module: the original for `revert`,
    the backend, and streaming delegation."""

    _zf_backend = "auto"

    @property
    def original_module(self) -> nn.Module:
        """The icefall / zipformer-package module this one replaced (shares its parameters)."""
        return self.__dict__[_ORIGINAL]

    def _backend_context(self):
        return contextlib.nullcontext() if self._zf_backend == "auto" else use_backend(self._zf_backend)

    def _delegate(self, base: type, method: str, *args, **kwargs):
        own = getattr(base, method, None)
        if own is not None:
            with self._backend_context():
                return own(self, *args, **kwargs)
        orig = self.original_module
        if not hasattr(orig, method):
            raise AttributeError(f"neither zipformer_fast's {base.__name__} nor the original "
                                 f"{type(orig).__name__} has {method}")
        _sync_dynamic_state(self, orig)
        return getattr(orig, method)(*args, **kwargs)


class AcceleratedZipformer2(_AcceleratedMixin, Zipformer2):
    """zipformer_fast's Zipformer2 standing in for an icefall / zipformer-package encoder."""

    def forward(self, x: Tensor, x_lens: Tensor, src_key_padding_mask: Optional[Tensor] = None
                ) -> Tuple[Tensor, Tensor]:
        if x.ndim != 3 or x.shape[-1] != self.encoder_dim[0]:
            raise ValueError(f"encoder input must be (T, N, {self.encoder_dim[0]}), got {tuple(x.shape)}")
        with self._backend_context():
            return Zipformer2.forward(self, x, x_lens, src_key_padding_mask)

    def streaming_forward(self, *args, **kwargs):
        return self._delegate(Zipformer2, "streaming_forward", *args, **kwargs)

    def get_init_states(self, *args, **kwargs):
        return self._delegate(Zipformer2, "get_init_states", *args, **kwargs)


class AcceleratedConv2dSubsampling(_AcceleratedMixin, Conv2dSubsampling):
    """zipformer_fast's Conv2dSubsampling standing in for icefall's."""

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        if x.ndim != 3 or ((x.shape[-1] - 1) // 2 - 1) // 2 != self.out_width:
            raise ValueError(f"encoder_embed input must be (N, T, F) with F giving {self.out_width} "
                             f"frequency bins after subsampling (F={4 * self.out_width + 3} or "
                             f"{4 * self.out_width + 4}), got {tuple(x.shape)}")
        if x.shape[1] < 9:
            raise ValueError(f"encoder_embed needs at least 9 frames, got {x.shape[1]}")
        with self._backend_context():
            return Conv2dSubsampling.forward(self, x, x_lens)

    def streaming_forward(self, *args, **kwargs):
        return self._delegate(Conv2dSubsampling, "streaming_forward", *args, **kwargs)

    def get_init_states(self, *args, **kwargs):
        return self._delegate(Conv2dSubsampling, "get_init_states", *args, **kwargs)


# ----------------------------------------------------------------------------- state transfer
def _is_peer_scheduled_float(v) -> bool:
    return isinstance(v, nn.Module) and type(v).__name__ == "ScheduledFloat" and hasattr(v, "schedule")


def _as_our_scheduled_float(v: nn.Module, memo: Dict[int, ScheduledFloat]) -> ScheduledFloat:
    if id(v) not in memo:
        sf = ScheduledFloat(*v.schedule.pairs, default=float(v.default))
        sf.batch_count = v.batch_count
        sf.training = v.training
        memo[id(v)] = sf
    return memo[id(v)]


def _fields(module: nn.Module) -> Dict[str, object]:
    out = {k: v for k, v in vars(module).items() if not k.startswith("_")}
    out.update(module._modules)
    return out


def _transfer_hyperparameters(where: str, peer: nn.Module, ours: nn.Module, memo) -> None:
    """Make `ours` behave as `peer`: copy ScheduledFloats and floats, check ints/bools/tuples."""
    ours.training = peer.training
    for attr in ("lr_scale", "name", "batch_count"):
        if attr in vars(peer):
            setattr(ours, attr, getattr(peer, attr))
    if isinstance(ours, ScheduledFloat):
        ours.points = [(float(x), float(y)) for x, y in peer.schedule.pairs]
        ours.default = float(peer.default)
        return
    mine = _fields(ours)
    for key, value in _fields(peer).items():
        if key in _IGNORED_FIELDS or key not in mine:
            continue
        current = mine[key]
        if _is_peer_scheduled_float(value) or (isinstance(value, float) and
                                                 (isinstance(current, (float, ScheduledFloat)))):
            if isinstance(current, ScheduledFloat) and _is_peer_scheduled_float(value):
                continue  # a registered submodule: handled when named_modules reaches it
            new = _as_our_scheduled_float(value, memo) if _is_peer_scheduled_float(value) else value
            if key in ours._modules:
                del ours._modules[key]
            setattr(ours, key, new)
        elif isinstance(value, (bool, int, str, tuple, list)) and not isinstance(value, float):
            same = (list(value) == list(current)) if isinstance(value, (tuple, list)) and \
                isinstance(current, (tuple, list)) else value == current
            if not same:
                raise AccelerateError(f"{where}.{key}: original has {value!r}, zipformer_fast built "
                                      f"{current!r}; this configuration cannot be mapped")


def _persistent_buffers(module: nn.Module) -> dict:
    """name -> buffer for every buffer that a state dict would hold."""
    return {f"{prefix}.{name}" if prefix else name: b
            for prefix, m in module.named_modules() for name, b in m._buffers.items()
            if b is not None and name not in m._non_persistent_buffers_set}


def _share_parameters(where: str, peer: nn.Module, ours: nn.Module) -> None:
    """Put peer's Parameter (and buffer) objects into ours, by name; names and shapes must agree."""
    theirs = dict(peer.named_parameters(remove_duplicate=False))
    mine = dict(ours.named_parameters(remove_duplicate=False))
    if list(theirs) != list(mine):
        missing = [n for n in theirs if n not in mine]
        extra = [n for n in mine if n not in theirs]
        raise AccelerateError(f"{where}: parameters differ from zipformer_fast's module: only in the "
                              f"original {missing[:8]}, only in ours {extra[:8]}"
                              + ("" if missing or extra else " (same names, another order)"))
    bad = [f"{n} {tuple(p.shape)} vs {tuple(mine[n].shape)}" for n, p in theirs.items() if p.shape != mine[n].shape]
    if bad:
        raise AccelerateError(f"{where}: parameter shapes differ: {bad[:8]}")
    # Non-persistent buffers (not in the state dict, e.g. our Whiten's traced probability) are each
    # side's own working state; the persistent ones are shared like the parameters.
    their_buffers, my_buffers = _persistent_buffers(peer), _persistent_buffers(ours)
    if set(their_buffers) != set(my_buffers):
        raise AccelerateError(f"{where}: buffers differ: {sorted(their_buffers)} vs {sorted(my_buffers)}")
    owners = dict(ours.named_modules())
    for name, p in theirs.items():
        prefix, _, leaf = name.rpartition(".")
        owners[prefix]._parameters[leaf] = p
    for name, b in their_buffers.items():
        prefix, _, leaf = name.rpartition(".")
        owners[prefix]._buffers[leaf] = b
    # Our own working buffers (Whiten probabilities, firing records) were made on the CPU; they
    # belong where the shared parameters live (a CUDA draw written into a CPU buffer would sync).
    device = next((p.device for p in theirs.values()), None)
    if device is not None:
        for m in ours.modules():
            for leaf in m._non_persistent_buffers_set:
                b = m._buffers.get(leaf)
                if b is not None and b.device != device:
                    m._buffers[leaf] = b.to(device)


def _sync_dynamic_state(src: nn.Module, dst: nn.Module) -> None:
    """Copy what changes while training (flags, batch counts, Whiten prob, chunking choices) from
    one module tree to the other, matched by name; used by revert and by streaming delegation."""
    dst_modules = dict(dst.named_modules())
    src_names = set()
    for name, m in src.named_modules():
        src_names.add(name)
        d = dst_modules.get(name)
        if d is None:
            continue
        d.training = m.training
        for attr in ("batch_count", "lr_scale", "prob", "chunk_size", "left_context_frames"):
            if attr in vars(m) and attr in vars(d):
                setattr(d, attr, getattr(m, attr))
    for name, d in dst_modules.items():  # the original's extra parameter-free modules
        if name not in src_names:
            d.training = src.training


# ------------------------------------------------------------------------------------ swapping
def _build_replacement(where: str, kind: str, peer: nn.Module, backend: str) -> nn.Module:
    if kind == "encoder":
        ours = AcceleratedZipformer2(encoder_config(peer))
        ours.chunk_size = list(peer.chunk_size)
        ours.left_context_frames = list(peer.left_context_frames)
    else:
        ours = AcceleratedConv2dSubsampling(**embed_args(peer))
    _share_parameters(where, peer, ours)
    memo: Dict[int, ScheduledFloat] = {}
    mine = dict(ours.named_modules())
    for name, m in peer.named_modules():
        if name in mine:
            _transfer_hyperparameters(f"{where}.{name}".rstrip("."), m, mine[name], memo)
    ours.__dict__[_ORIGINAL] = peer
    ours._zf_backend = backend
    return ours


def _targets(model: nn.Module) -> List[Tuple[str, str, nn.Module]]:
    found, skip = [], []
    for name, m in model.named_modules():
        if any(name.startswith(s + ".") for s in skip):
            continue
        if isinstance(m, _AcceleratedMixin):
            skip.append(name)
            continue
        kind = peer_kind(m)
        if kind is not None:
            found.append((name, kind, m))
            skip.append(name)
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if name == "":
        return new
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    parent._modules[leaf] = new
    return model


def accelerate(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Swap zipformer_fast's modules into an icefall / zipformer-package model, sharing parameters.

    Returns `model` (changed in place), or the replacement when `model` itself is a bare Zipformer2
    or Conv2dSubsampling. `backend` ("auto" | "triton" | "reference") pins the fused-op backend
    for the accelerated modules; "auto" follows zipformer_fast.use_backend / the environment.
    Call it before wrapping the model in DDP. Raises AccelerateError naming what cannot be mapped,
    and ValueError when nothing accelerable is found."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
    targets = _targets(model)
    if not targets:
        if isinstance(model, _AcceleratedMixin) or any(isinstance(m, _AcceleratedMixin) for m in model.modules()):
            return model  # already accelerated
        raise ValueError(f"accelerate: no icefall Zipformer2 / Zipformer or Conv2dSubsampling found in "
                         f"{type(model).__name__}")
    for name, kind, peer in targets:
        model = _replace(model, name, _build_replacement(name or type(peer).__name__, kind, peer, backend))
    return model


def revert(model: nn.Module) -> nn.Module:
    """Put the original modules back (with the current parameter objects and training state).
    Returns `model`, or the original module when `model` itself was an accelerated module."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, _AcceleratedMixin)]
    if not found:
        raise ValueError(f"revert: {type(model).__name__} has no module made by zipformer_fast.accelerate")
    for name, ours in found:
        orig = ours.original_module
        owners = dict(orig.named_modules())
        for pname, p in ours.named_parameters(remove_duplicate=False):
            prefix, _, leaf = pname.rpartition(".")
            owners[prefix]._parameters[leaf] = p
        _sync_dynamic_state(ours, orig)
        model = _replace(model, name, orig)
    return model


# --------------------------------------------------------------------------- class-level patching
def _plain_new(klass, *args, **kwargs):
    return object.__new__(klass)


class ClassPatch:
    """The classes `accelerate_classes` patched; `restore()` (or leaving the `with`) undoes it."""

    def __init__(self, backend: str):
        self.backend = backend
        self.patched: List[type] = []

    def patch(self, cls: type) -> None:
        backend = self.backend

        def __new__(klass, *args, **kwargs):
            module = object.__new__(klass)
            if klass is not cls or not (args or kwargs):  # subclasses, copy/pickle: untouched
                return module
            module.__init__(*args, **kwargs)
            # Not an instance of klass, so Python does not run __init__ a second time.
            return accelerate(module, backend=backend)

        # __new__ on the class itself (not a replacement class in the namespace): icefall's
        # `super(Zipformer2, self).__init__()` must still see the original class under its name.
        cls.__new__ = __new__
        self.patched.append(cls)

    def restore(self) -> None:
        for cls in reversed(self.patched):
            # Not `del cls.__new__`: CPython then leaves a slot that rejects constructor arguments.
            cls.__new__ = _plain_new
        self.patched.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.restore()


def accelerate_classes(*namespaces, backend: str = "auto") -> ClassPatch:
    """Patch the Zipformer2 / Zipformer / Conv2dSubsampling classes found in each namespace (a
    module, e.g. icefall's `zipformer` and `subsampling` or the recipe's `train`, or any object with
    those attributes) so that constructing them returns accelerated modules. Returns a ClassPatch:
    call `.restore()`, or use it as a context manager
    (`with accelerate_classes(train_module): model = get_model(params)`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {BACKENDS}")
    patch = ClassPatch(backend)
    for ns in namespaces:
        for attr in ("Zipformer2", "Zipformer", "Conv2dSubsampling"):
            cls = getattr(ns, attr, None)
            if isinstance(cls, type) and issubclass(cls, nn.Module) and not issubclass(cls, _AcceleratedMixin) \
                    and vars(cls).get("__new__", _plain_new) is _plain_new and cls not in patch.patched:
                patch.patch(cls)
    if not patch.patched:
        raise ValueError("accelerate_classes: none of Zipformer2 / Zipformer / Conv2dSubsampling found in "
                         f"{[getattr(n, '__name__', type(n).__name__) for n in namespaces]}")
    return patch
