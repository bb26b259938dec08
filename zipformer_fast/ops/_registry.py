"""torch.library plumbing shared by the fused ops (and usable by the attention ops).

Every fused launcher is a `torch.library.custom_op` in the "zipformer_fast" namespace, with a fake
(meta) implementation and an autograd formula registered on it. That makes the Triton launch
opaque to torch.compile: dynamo traces a model calling these ops without graph breaks, and the
op's backward is itself a custom op. `torch.library.custom_op` / `register_fake` /
`register_autograd` exist from torch 2.4 on; `triton_op` (torch >= 2.6) is not needed because we
never want inductor to look inside our kernels.

The custom-op dispatcher costs ~20 us of Python per call (schema checks, autograd wrapper,
redispatch), which eager mode pays on every call while the kernel itself may take a few us. So
the custom op is used only while tracing: `FusedOp` calls its plain Python launcher in eager mode
and the registered op under `torch.compiler.is_compiling()` or a TorchDispatchMode (`tracing()`),
and each op module pairs the op's registered autograd with an equivalent `torch.autograd.Function`
for eager (same saved tensors, same backward launcher). bench/host_overhead.py measures the result.

Kernels are imported lazily (`kernels("bias_norm")`) so that the package imports without triton.
Op implementations must not use `from __future__ import annotations`: custom_op infers the schema
from real type objects on torch 2.4.
"""
import functools
import importlib
from typing import Callable, Optional

import torch

from ..backend import use_triton_for

NAMESPACE = "zipformer_fast"

if not hasattr(torch.library, "custom_op"):  # pragma: no cover - torch < 2.4
    raise ImportError(f"zipformer_fast needs torch >= 2.4 (torch.library.custom_op); found {torch.__version__}")


def custom_op(name: str, fake: Optional[Callable] = None, mutates_args=()):
    """Decorator: register `fn` as zipformer_fast::<name> (all devices) with its fake impl."""

    def wrap(fn):
        op = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=mutates_args)
        if fake is not None:
            op.register_fake(fake)
        return op

    return wrap


def register_autograd(op, backward: Callable, setup_context: Callable) -> None:
    op.register_autograd(backward, setup_context=setup_context)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "is_compiling"):
    is_compiling = torch.compiler.is_compiling
else:  # pragma: no cover - torch < 2.3
    is_compiling = torch._dynamo.is_compiling

_dispatch_modes = torch._C._len_torch_dispatch_stack


def tracing() -> bool:
    """Whether the custom ops must be used: dynamo is tracing, or a TorchDispatchMode is active
    (FakeTensorMode, make_fx's proxy mode, a counting mode): such modes see one opaque op and run
    its fake impl on fake tensors, where a direct launch would try to read fake memory."""
    return is_compiling() or _dispatch_modes() > 0


def function_may_launch() -> bool:
    """Whether an autograd.Function may call our custom ops inside its forward or backward: in
    eager mode only. While dynamo traces, such a Function fails as soon as shapes are dynamic
    (dynamo cannot lift the outer graph's size symbols into the Function's subgraph: "should not
    be called on root SubgraphTracer", torch 2.13; automatic-dynamic recompiles hit it on the
    second input length), so the ops that wrap several launches in one Function trace their
    composition of single custom ops instead, each with its registered autograd (the fused
    recomputation in backward is then the compiler's job). A TorchDispatchMode without dynamo
    (counting launches or saved bytes) runs the Functions as eager does."""
    return not is_compiling()


def use_op(x: torch.Tensor) -> bool:
    """tracing(), or x lives on the meta device (shape propagation: the op's fake impl answers)."""
    return x.is_meta or tracing()


class FusedOp:
    """A launcher `impl` registered as the custom op zipformer_fast::<name> (with its fake impl).

    Calling the FusedOp runs `impl` directly in eager mode and the custom op while tracing
    (`tracing()`), so compiled graphs hold one opaque node per launch. Code that is traced by
    AOTAutograd without dynamo (a registered autograd formula) calls `.op` explicitly."""

    def __init__(self, name: str, impl: Callable, fake: Callable, mutates_args=()):
        self.impl = impl
        self.op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=mutates_args)
        self.op.register_fake(fake)

    def __call__(self, *args):
        if use_op(args[0]):
            return self.op(*args)
        return self.impl(*args)


def eager_apply(fn: type) -> Callable:
    """fn.apply for the eager path of a fused op (its callers have checked route(): dynamo is not
    tracing, no torch.func transform is active). torch.autograd.Function.apply first runs a Python
    prologue (binding default arguments for setup_context, unwrapping tensors that escaped a
    functorch transform) that costs ~3-4 us a call and does nothing for our Functions on plain
    tensors, so the C++ apply, bound once here, is called directly (bench/host_overhead.py)."""
    return super(torch.autograd.Function, fn).apply


# The path one fused-op call takes (route()).
REFERENCE, CUSTOM_OP, FUNCTION, LAUNCH = 0, 1, 2, 3

_grad_enabled = torch.is_grad_enabled


def route(*tensors) -> int:
    """The path of one fused-op call on `tensors` (None entries are skipped; the first is the
    op's main input): REFERENCE when the backend rule says PyTorch (backend.use_triton_for);
    CUSTOM_OP while tracing or on meta tensors (use_op); FUNCTION when autograd records the call
    (needs_grad: the op's eager autograd.Function); LAUNCH otherwise (the launcher itself). One
    call instead of the three in turn; use_op's and needs_grad's rules are written out here
    (~0.15 us less host time per fused call than calling them, measured)."""
    if not use_triton_for(*tensors):
        return REFERENCE
    if tensors[0].is_meta or is_compiling() or _dispatch_modes() > 0:
        return CUSTOM_OP
    if _grad_enabled():
        for t in tensors:
            if t is not None and t.requires_grad:
                return FUNCTION
    return LAUNCH


def backward_once(backward: Callable) -> Callable:
    """Decorator for the backward of the ops' eager autograd.Functions: torch's
    once_differentiable (a second differentiation raises) without its cost on the path the
    autograd engine takes. The engine runs a node with grad mode off unless create_graph=True;
    once_differentiable enters torch.no_grad() on every call (~1 us of host time), so only a
    create_graph backward goes through it."""
    checked = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def run(ctx, *grads):
        if _grad_enabled():
            return checked(ctx, *grads)
        return backward(ctx, *grads)

    return run


def needs_grad(*tensors) -> bool:
    """Whether autograd would record an op on these tensors (None entries are skipped)."""
    if not torch.is_grad_enabled():
        return False
    for t in tensors:
        if t is not None and t.requires_grad:
            return True
    return False


@functools.lru_cache(maxsize=None)
def kernels(name: str):
    """The Triton kernel module kernels/<name>.py (installed as zipformer_fast.kernels.<name>)."""
    return importlib.import_module(f"zipformer_fast.kernels.{name}")


def contiguous_rows(x: torch.Tensor) -> torch.Tensor:
    """x as a (rows, last-dim) matrix with unit column stride; copies only when no view exists."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]):
        x2 = x2.contiguous()
    return x2


def empty_out(like: torch.Tensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """A new contiguous tensor of `like`'s shape, in `dtype` (default: like's). torch.empty_like
    when `like` is contiguous (~1 us of host time, against ~3 us for torch.empty(shape, dtype=,
    device=), whose shape goes through the Python argument parser), without a memory_format
    keyword (~0.3 us more to parse): it then copies like's strides, which can differ from the
    standard ones only on size-1 dims, where no consumer reads them (the fake impls' checks,
    torch.library.opcheck and inductor's assert_size_stride, compare strides of dims > 1 only)."""
    if like.is_contiguous():
        if dtype is None:  # no dtype keyword to parse (host time)
            return torch.empty_like(like)
        return torch.empty_like(like, dtype=dtype)
    return torch.empty(like.shape, dtype=like.dtype if dtype is None else dtype, device=like.device)


def row_layout(x: torch.Tensor):
    """(x2, rows, row_stride) for a row-wise kernel over the last dim: x itself when it is
    contiguous (no view: a reshape costs ~1-3 us of host time), else contiguous_rows(x)."""
    d = x.shape[-1]
    if x.is_contiguous():
        return x, x.numel() // d, d
    x2 = contiguous_rows(x)
    return x2, x2.shape[0], x2.stride(0)


def unit_channel_stride(x: torch.Tensor):
    """(x, x.stride()) for a (T, B, C) tensor with a unit channel stride: x itself (a channel-
    truncation view stays a view), else a contiguous copy. The strides come back with it: the
    launchers take them as ints (one stride() call, not one per dim: host time)."""
    st = x.stride()
    if st[2] == 1:
        return x, st
    x = x.contiguous()
    return x, x.stride()


def _device_type(x: torch.Tensor) -> str:
    # x.device.type builds a device object and a new string (~0.6 us of host time a call)
    return "cuda" if x.is_cuda else ("cpu" if x.is_cpu else x.device.type)


_any_autocast = getattr(torch._C, "_is_any_autocast_enabled", lambda: True)


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether an autocast region is active for x's device type."""
    if not _any_autocast():  # one C call answers the common case (host time)
        return False
    dev = _device_type(x)
    if _AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(dev)
    # torch < 2.4-style API
    return torch.is_autocast_enabled() if dev == "cuda" else torch.is_autocast_cpu_enabled()


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """dtype a GEMM runs in: the autocast dtype inside an autocast region for x's device, else x's dtype."""
    if not autocast_enabled(x):
        return x.dtype
    dev = _device_type(x)
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(dev)
    return torch.get_autocast_gpu_dtype() if dev == "cuda" else torch.get_autocast_cpu_dtype()


def gemm_weight(x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
    """weight in the dtype a GEMM on x runs in: autocast's dtype inside an autocast region (as
    F.linear would cast it), else x's, which it must already have."""
    if not autocast_enabled(x):
        if weight.dtype != x.dtype:
            raise TypeError(f"{name}: x is {x.dtype} but weight is {weight.dtype} (outside autocast they must match)")
        return weight
    cdt = compute_dtype(x)
    return weight if weight.dtype == cdt else weight.to(cdt)


def linear_grads(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 need_x: bool, need_w: bool, need_b: bool):
    """Gradients of y = linear(x, weight, bias) given dL/dy, as two GEMMs on the flattened rows
    (dx = dy W, dW = dy^T x; db = sum dy in fp32), in the dtype of `weight` (pass the autocast copies
    of x and weight: the GEMMs then run in that dtype, as autograd's would). Each result is None
    where not needed; dx has x's shape and dtype, dW and db the dtypes of `weight` / `bias`."""
    g2 = grad.reshape(-1, weight.shape[0]).to(weight.dtype)
    dx = (g2 @ weight).reshape(x.shape).to(x.dtype) if need_x else None
    dw = g2.t() @ x.reshape(-1, weight.shape[1]).to(weight.dtype) if need_w else None
    db = g2.float().sum(0).to(bias.dtype) if need_b and bias is not None else None
    return dx, dw, db


def _autocast_takes_device() -> bool:
    try:
        torch.is_autocast_enabled("cpu")
        return True
    except TypeError:
        return False


# A plain constant (not a cached call) so that dynamo traces compute_dtype without warnings.
_AUTOCAST_TAKES_DEVICE = _autocast_takes_device()
