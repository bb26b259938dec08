"""Launch helpers shared by the Triton kernels: interpreter detection, host-side integer helpers,
the SM count, the number of programs for kernels that reduce over rows into per-program partial
sums or walk a tensor in a grid-stride loop, and fp32 math helpers.

Launch configurations are fixed per (shape class, dtype) by each launcher (no autotuning in the
hot path: an autotuner costs host time on every call and benchmarks on the first call of every
new key). The interpreter pays per program instance, so it gets large blocks.

Row-reduction scheme used by every backward with a parameter gradient (BiasNorm bias/log_scale,
bypass scale, downsample weights): a fixed number P of programs each walk a contiguous range of
rows, accumulate their partial sum in registers, write it once to a (P, ...) fp32 buffer, and
one fold launch (fold_rows) sums the P partials. No atomics, deterministic, and P is chosen by the
launcher (not by the autotuner) so the buffer size does not depend on the tuned block sizes. The
partial buffers are per-thread, per-stream scratch (`scratch_fp32`), not a new allocation per call.

Kernels are launched as `kernel.run(*args, *constexprs, grid=grid, warmup=False, num_warps=w)`:
what `kernel[grid](*args, **meta)` calls, without the proxy lambda that packs the arguments a
second time (~0.8 us of host time per launch, bench/host_overhead.py), and with the constexprs
passed positionally, in the order of the kernel's signature (~0.1 us less per constexpr than
as keywords, measured on a stubbed launcher: no keyword dict to build and unpack). Each launcher states that order once, at import, through
`constexpr_order`, which fails if the signature says otherwise. The attention kernels keep
keyword constexprs (merged from several dicts; their launches are long on a GPU).
"""
import inspect
import functools
import threading

import torch
import triton
import triton.language as tl

from zipformer_fast.runtime import triton_interpret

INTERPRET = triton_interpret()  # read once: Triton decides interpreter-or-not at decoration time too


def constexpr_names(kernel) -> tuple:
    """Names of a @triton.jit kernel's trailing constexpr parameters, in signature order (through
    an autotuner, the jit function, or the interpreter's wrapper alike)."""
    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    params = list(inspect.signature(fn).parameters.values())
    names = []
    for p in reversed(params):
        if "constexpr" not in str(p.annotation):
            break
        names.append(p.name)
    return tuple(reversed(names))


def constexpr_order(kernel, *names: str) -> None:
    """Fails unless `names` are exactly the kernel's trailing constexpr parameters, in order: the
    launcher passes them positionally in that order (see the module docstring)."""
    found = constexpr_names(kernel)
    if found != names:
        raise AssertionError(f"{kernel}: trailing constexprs are {found}, the launcher passes {names}")


def configs(gpu_configs, interpreter_config):
    """Autotune configs (compute-bound GEMMs only): the GPU list, or the single interpreter config."""
    return [interpreter_config] if INTERPRET else list(gpu_configs)


# SM count assumed off-GPU (interpreter, ahead-of-time compiles); on a GPU it is queried.
FALLBACK_SMS = 4


def cdiv(a: int, b: int) -> int:
    """Ceil-division of host ints (triton.cdiv is a constexpr_function: ~10 us per host call)."""
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


@functools.lru_cache(maxsize=None)
def _cuda_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(t: torch.Tensor) -> int:
    """Streaming multiprocessors of the GPU holding `t` (torch.cuda properties), FALLBACK_SMS for
    tensors elsewhere. Takes the tensor, not its device: `device.type` builds a new string on
    every call (~0.5 us of host time), `is_cuda` / `get_device()` do not."""
    if not t.is_cuda:
        return FALLBACK_SMS
    return _cuda_sms(t.get_device())


def reduction_programs(n_rows: int, t: torch.Tensor, min_rows: int = 16, per_sm: int = 4) -> int:
    """How many programs share the rows of a reduction over tensor `t`: `per_sm` per SM on a GPU
    (so the partial buffer has O(SMs) rows, not O(rows)), at least `min_rows` rows each,
    FALLBACK_SMS in the interpreter."""
    progs = per_sm * _cuda_sms(t.get_device()) if t.is_cuda else FALLBACK_SMS
    return max(1, min(progs, -(-n_rows // min_rows)))


def programs_along_rows(rows: int, column_programs: int, t: torch.Tensor, min_rows: int, per_sm: int = 4) -> int:
    """Programs along the rows of a 2-D reduction grid (rows x column_programs), each reducing its
    rows into one partial: ~per_sm programs per SM over the whole grid, so the partial buffer is
    O(SMs x columns) whatever the row count, and at least min_rows rows each; FALLBACK_SMS at most
    off-GPU (reduction_programs' rule, inlined: this runs in every backward)."""
    if t.is_cuda:
        progs = -(-per_sm * _cuda_sms(t.get_device()) // column_programs)
    else:
        progs = min(FALLBACK_SMS, -(-per_sm * FALLBACK_SMS // column_programs))
    return max(1, min(progs, -(-rows // min_rows)))


_scratch = threading.local()


def scratch_fp32(t: torch.Tensor, numel: int, slot: int = 0) -> torch.Tensor:
    """A flat fp32 buffer of at least `numel` entries on t's device, for per-program partial sums:
    reused by every call of this thread on the same device and CUDA stream (`slot` tells apart two
    buffers live in one call), which saves an allocation per backward (~2 us of host time).
    Reuse is safe because kernels on one stream run in launch order, so the fold that reads a
    reduction's partials finishes before the next reduction overwrites them; another thread or
    stream gets its own buffer. While a CUDA graph is being captured it allocates (from the
    graph's pool), so a graph never shares scratch with eager calls. Contents are undefined. A
    slot keeps the largest size asked of it (the dW partials of the largest feed-forward GEMM, tens
    of MB on a big GPU, are the largest)."""
    if t.is_cuda:
        if torch.cuda.is_current_stream_capturing():
            return torch.empty(numel, dtype=torch.float32, device=t.device)
        index = t.get_device()
        key = (index, torch._C._cuda_getCurrentRawStream(index), slot)
    else:
        key = (t.is_cpu, slot)
    buffers = getattr(_scratch, "buffers", None)
    if buffers is None:
        buffers = _scratch.buffers = {}
    buf = buffers.get(key)
    if buf is None or buf.numel() < numel:
        grown = numel if buf is None else max(numel, 2 * buf.numel())
        buf = buffers[key] = torch.empty(grown, dtype=torch.float32, device=t.device)
    return buf


def row_tile(block_d: int, tile: int, max_rows: int, warps_from: int, interpreter_rows: int):
    """(BLOCK_M, num_warps) for a kernel that holds whole rows of BLOCK_D: ~`tile` elements per
    tile (at most max_rows rows), 8 warps once a tile reaches `warps_from` elements, else 4. The
    interpreter, which pays per program, gets interpreter_rows rows and 4 warps."""
    if INTERPRET:
        return interpreter_rows, 4
    bm = max(1, min(max_rows, tile // block_d))
    return bm, (8 if bm * block_d >= warps_from else 4)


@functools.lru_cache(maxsize=None)
def row_plan(config, d: int):
    """(BLOCK_D, BLOCK_M, num_warps) of a whole-row kernel for rows of d: BLOCK_D = next_pow2(d)
    and config(BLOCK_D), cached per (config, d) (computing them costs ~0.4 us of host time)."""
    block_d = next_pow2(d)
    bm, warps = config(block_d)
    return block_d, bm, warps


def row_kernel_specs(spec, dtypes, kernels_and_configs, pointer_dtypes):
    """Ahead-of-time compile list for whole-row kernels: each (kernel, config(block_d)) at
    Zipformer's row widths, each width its own (BLOCK_M, num_warps): all in fp16, the middle one
    in the other dtypes."""
    out = []
    for dt in dtypes:
        for d in ((192, 512, 1024) if dt == "fp16" else (512,)):
            block_d = next_pow2(d)
            for kernel, config in kernels_and_configs:
                bm, w = config(block_d)
                out.append(spec(kernel, {"BLOCK_M": bm, "BLOCK_D": block_d}, pointer_dtypes, dt, num_warps=w,
                                tag=f"{dt},D={block_d}"))
    return out


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 tl.dot precision mirroring torch: TF32 only where torch allows it for matmuls."""
    # the flag torch.backends.cuda.matmul.allow_tf32 reads, without its Python __getattr__ (~1 us)
    if dtype == torch.float32 and not torch._C._get_cublas_allow_tf32():
        return "ieee"
    return "tf32"


@triton.jit
def softplus(z):
    # log(1 + e^z) without overflow; libdevice log1p is unavailable in the interpreter.
    return tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def fold_rows_kernel(part_ptr, out_a_ptr, out_b_ptr, out_c_ptr, R, L, N_A, N_AB, R2, L2, OFF2, BLOCKS1,
                     BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """Sums over rows of fp32 partials, in one or two blocks: block 1 is (R, L) at part, block 2
    (R2, L2) at part + OFF2 (R2 = L2 = 0: none); the first BLOCKS1 programs fold block 1. The
    column sums are numbered on, block 2's after block 1's (j = L + its column), and column j goes
    to out_a[j] for j < N_A, out_b[j - N_A] for j < N_AB, out_c[j - N_AB] after, each in its
    tensor's dtype."""
    pid = tl.program_id(0)
    # block selection by arithmetic, not if/else: an argument equal to 1 is specialised to a
    # constant, and the two branches' values would then differ in type
    in2 = (pid >= BLOCKS1).to(tl.int32)
    n_rows = R + (R2 - R) * in2
    width = L + (L2 - L) * in2
    base = OFF2 * in2
    c0 = (pid - BLOCKS1 * in2) * BLOCK_L
    first = L * in2
    local = c0 + tl.arange(0, BLOCK_L)
    lmask = local < width
    acc = tl.zeros((BLOCK_R, BLOCK_L), dtype=tl.float32)
    for r0 in range(0, n_rows, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        acc += tl.load(part_ptr + base + rows.to(tl.int64)[:, None] * width + local[None, :],
                       mask=(rows < n_rows)[:, None] & lmask[None, :], other=0.0)
    total = tl.sum(acc, axis=0)
    cols = first + local
    in_a = cols < N_A
    in_c = cols >= N_AB
    tl.store(out_a_ptr + tl.where(in_a, cols, 0), total.to(out_a_ptr.dtype.element_ty), mask=lmask & in_a)
    tl.store(out_b_ptr + tl.where(in_a | in_c, 0, cols - N_A), total.to(out_b_ptr.dtype.element_ty),
             mask=lmask & ~in_a & ~in_c)
    tl.store(out_c_ptr + tl.where(in_c, cols - N_AB, 0), total.to(out_c_ptr.dtype.element_ty), mask=lmask & in_c)


FOLD_BLOCK_R, FOLD_BLOCK_L = (64, 256) if INTERPRET else (32, 128)
constexpr_order(fold_rows_kernel, "BLOCK_R", "BLOCK_L")


def fold_rows(part, rows: int, out_a, out_b=None, out_c=None) -> None:
    """Sum the first `rows` rows of the contiguous fp32 partials `part` (read as (rows, L), L = the
    outputs' total numel; `part` may be longer: scratch) into out_a (first columns), out_b (the
    next) and out_c (the rest): one launch instead of torch's sum plus a dtype cast per output."""
    n_a = out_a.numel()
    n_ab = n_a if out_b is None else n_a + out_b.numel()
    L = n_ab if out_c is None else n_ab + out_c.numel()
    blocks = cdiv(L, FOLD_BLOCK_L)
    fold_rows_kernel.run(part, out_a, out_a if out_b is None else out_b, out_a if out_c is None else out_c,
                         rows, L, n_a, n_ab, 0, 0, 0, blocks, FOLD_BLOCK_R, FOLD_BLOCK_L, grid=(blocks,), warmup=False,
                         num_warps=4)


def fold_two_blocks(part, rows_a: int, out_a, offset_b: int, rows_b: int, out_b, out_c) -> None:
    """Two folds in one launch: the (rows_a, out_a.numel()) block at `part` into out_a and the
    (rows_b, out_b.numel() + out_c.numel()) block at part[offset_b:] into out_b then out_c (for
    partials whose parameters fold over different row sets, e.g. a per-sequence scale next to
    per-channel parameters)."""
    n_a = out_a.numel()
    n_ab = n_a + out_b.numel()
    blocks_a = cdiv(n_a, FOLD_BLOCK_L)
    width_b = n_ab - n_a + out_c.numel()
    fold_rows_kernel.run(part, out_a, out_b, out_c, rows_a, n_a, n_a, n_ab, rows_b, width_b, offset_b, blocks_a,
                         FOLD_BLOCK_R, FOLD_BLOCK_L, grid=(blocks_a + cdiv(width_b, FOLD_BLOCK_L),), warmup=False,
                         num_warps=4)


def aot_specs(spec, dtypes):
    """Ahead-of-time compile list for the shared kernels (the fold writes parameter gradients)."""
    return [spec(fold_rows_kernel, {"BLOCK_R": 32, "BLOCK_L": 128}, {"part_ptr": "fp32"}, dt, num_warps=4)
            for dt in dtypes]
