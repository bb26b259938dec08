"""Launch helpers shared by the Triton kernels: interpreter detection, host-side integer helpers,
the SM count, the number of programs for kernels that reduce over rows into per-program partial
sums or walk a tensor in a grid-stride loop, and fp32 math helpers.

Launch configurations are fixed per (shape class, dtype) by each launcher (no autotuning in the
hot path: an autotuner costs host time on every call and benchmarks on the first call of every
new key). The interpreter pays per program instance, so it gets large blocks.

Row-reduction scheme used by every backward with a parameter gradient (BiasNorm bias/log_scale,
bypass scale, downsample weights): a fixed number P of programs each walk a contiguous range of
rows, accumulate their partial sum in registers, write it once to a (P, ...) fp32 buffer, and
torch sums the P partials. No atomics, deterministic, and P is chosen by the launcher (not by the
autotuner) so the buffer size does not depend on the tuned block sizes.
"""
import functools

import torch
import triton
import triton.language as tl

from zipformer_fast.runtime import triton_interpret

INTERPRET = triton_interpret()  # read once: Triton decides interpreter-or-not at decoration time too


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
    progs = per_sm * num_sms(t) if t.is_cuda else FALLBACK_SMS
    return max(1, min(progs, -(-n_rows // min_rows)))


def programs_along_rows(rows: int, column_programs: int, t: torch.Tensor, min_rows: int, per_sm: int = 4) -> int:
    """Programs along the rows of a 2-D reduction grid (rows x column_programs), each reducing its
    rows into one partial: ~per_sm programs per SM over the whole grid, so the partial buffer is
    O(SMs x columns) whatever the row count, and at least min_rows rows per program."""
    budget = cdiv(per_sm * num_sms(t), column_programs)
    return max(1, min(reduction_programs(rows, t, min_rows=min_rows), budget))


def row_tile(block_d: int, tile: int, max_rows: int, warps_from: int, interpreter_rows: int):
    """(BLOCK_M, num_warps) for a kernel that holds whole rows of BLOCK_D: ~`tile` elements per
    tile (at most max_rows rows), 8 warps once a tile reaches `warps_from` elements, else 4. The
    interpreter, which pays per program, gets interpreter_rows rows and 4 warps."""
    if INTERPRET:
        return interpreter_rows, 4
    bm = max(1, min(max_rows, tile // block_d))
    return bm, (8 if bm * block_d >= warps_from else 4)


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
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def softplus(z):
    # log(1 + e^z) without overflow; libdevice log1p is unavailable in the interpreter.
    return tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))


@triton.jit
def fold_rows_kernel(part_ptr, out_a_ptr, out_b_ptr, R, L, N_A, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr):
    """total[j] = sum_r part[r, j] over an (R, L) fp32 matrix of per-program partial sums; columns
    j < N_A are written to out_a[j], the others to out_b[j - N_A], each in its tensor's dtype."""
    cols = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    cmask = cols < L
    acc = tl.zeros((BLOCK_R, BLOCK_L), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        acc += tl.load(part_ptr + rows.to(tl.int64)[:, None] * L + cols[None, :],
                       mask=(rows < R)[:, None] & cmask[None, :], other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(out_a_ptr + cols, total.to(out_a_ptr.dtype.element_ty), mask=cmask & (cols < N_A))
    tl.store(out_b_ptr + tl.where(cols >= N_A, cols - N_A, 0), total.to(out_b_ptr.dtype.element_ty),
             mask=cmask & (cols >= N_A))


FOLD_BLOCK_R, FOLD_BLOCK_L = (64, 256) if INTERPRET else (32, 128)


def fold_rows(part, out_a, out_b=None) -> None:
    """Sum the rows of the contiguous fp32 partials `part` (viewed as (R, L), L = out_a.numel() +
    out_b.numel()) into out_a (first columns) and out_b (the rest): one launch instead of
    torch's sum plus a dtype cast per output."""
    n_a = out_a.numel()
    L = n_a + (out_b.numel() if out_b is not None else 0)
    R = part.numel() // L
    fold_rows_kernel[(cdiv(L, FOLD_BLOCK_L),)](part, out_a, out_b if out_b is not None else out_a, R, L, n_a,
                                               BLOCK_R=FOLD_BLOCK_R, BLOCK_L=FOLD_BLOCK_L, num_warps=4)


def aot_specs(spec, dtypes):
    """Ahead-of-time compile list for the shared kernels (the fold writes parameter gradients)."""
    return [spec(fold_rows_kernel, {"BLOCK_R": 32, "BLOCK_L": 128}, {"part_ptr": "fp32"}, dt, num_warps=4)
            for dt in dtypes]
