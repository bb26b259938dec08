"""Launch helpers shared by the Triton kernels: interpreter detection, autotune config lists that
collapse to one config under TRITON_INTERPRET=1 (autotuning benchmarks on a device), the number of
programs for kernels that reduce over rows into per-program partial sums, and fp32 math helpers.

Row-reduction scheme used by every backward with a parameter gradient (BiasNorm bias/log_scale,
bypass scale, downsample weights): a fixed number P of programs each walk a contiguous range of
rows, accumulate their partial sum in registers, write it once to a (P, ...) fp32 buffer, and
torch sums the P partials. No atomics, deterministic, and P is chosen by the launcher (not by the
autotuner) so the buffer size does not depend on the tuned block sizes.
"""
import functools
import os

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def configs(gpu_configs, interpreter_config):
    """Autotune configs: the GPU list, or the single interpreter config."""
    return [interpreter_config] if INTERPRET else list(gpu_configs)


@functools.lru_cache(maxsize=None)
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def reduction_programs(n_rows: int, device: torch.device, min_rows: int = 16) -> int:
    """How many programs share the rows of a reduction: ~4 per SM on a GPU, few in the interpreter."""
    if device.type != "cuda":
        return max(1, min(4, triton.cdiv(n_rows, min_rows)))
    return max(1, min(4 * _num_sms(device.index or 0), triton.cdiv(n_rows, min_rows)))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 tl.dot precision mirroring torch: TF32 only where torch allows it for matmuls."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


@triton.jit
def softplus(z):
    # log(1 + e^z) without overflow; libdevice log1p is unavailable in the interpreter.
    return tl.maximum(z, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(z)))
