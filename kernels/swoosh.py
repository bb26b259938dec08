"""Triton kernels for SwooshL / SwooshR (formulas in zipformer_fast/ops/swoosh.py).

Elementwise over a flat contiguous buffer, fp32 math whatever the storage dtype. The forward
writes y and, for backward, either nothing (exact mode: the op saves x itself) or one uint8 per
element (compact mode, k2's trick): byte = floor(g * 255/1.005 + u), g = sigmoid(x - shift) in
[0, 1], u ~ U[0, 1) from Philox (stochastic rounding keeps the decoded derivative unbiased).
Backward decodes byte * 1.005/255 - 0.08 (error < 1.005/255 per element) or recomputes
sigmoid(x - shift) - 0.08 exactly from x.

`swoosh_value` / `swoosh_deriv` are also used by kernels/activation_linear.py.
"""
import triton
import triton.language as tl

from ._common import INTERPRET, cdiv, constexpr_order, num_sms, softplus

# GPU: a tile is 8 warps x 32 lanes x 8 (fp32) or 16 (16-bit) elements = two 16-byte vectors per
# lane; a grid-stride loop over tiles with PROGRAMS_PER_SM programs per SM (8 x 256 threads fill an
# SM), so big tensors do not launch one program per tile. The interpreter pays per program
# instance, so it gets large blocks.
BLOCK = 16384 if INTERPRET else 2048
NUM_WARPS = 8
PROGRAMS_PER_SM = 8
SAVE_NONE, SAVE_UINT8 = 0, 1
UINT8_SCALE = 1.005 / 255.0


@triton.jit
def swoosh_value(x, shift, offset):
    """fp32 x -> softplus(x - shift) - 0.08 x - offset."""
    return softplus(x - shift) - 0.08 * x - offset


@triton.jit
def swoosh_deriv(x, shift):
    """fp32 x -> d/dx swoosh = sigmoid(x - shift) - 0.08."""
    return tl.sigmoid(x - shift) - 0.08


@triton.jit
def _tile(i, BLOCK: tl.constexpr):
    """Element offsets of this program's i-th tile in the grid-stride loop (int64)."""
    return (tl.program_id(0) + i * tl.num_programs(0)).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def swoosh_fwd_kernel(x_ptr, y_ptr, d_ptr, n, tiles_per_prog, seed, shift, offset,
                      SAVE: tl.constexpr, BLOCK: tl.constexpr):
    for i in range(tiles_per_prog):
        offs = _tile(i, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = swoosh_value(x, shift, offset)
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
        if SAVE == 1:
            g = tl.sigmoid(x - shift)
            u = tl.rand(seed, offs.to(tl.uint32))
            q = tl.floor(g * (255.0 / 1.005) + u)  # g <= 1 -> q <= 254: fits a byte
            q = tl.minimum(tl.maximum(q, 0.0), 255.0)
            tl.store(d_ptr + offs, q.to(tl.uint8), mask=mask)


@triton.jit
def swoosh_bwd_kernel(g_ptr, s_ptr, dx_ptr, n, tiles_per_prog, shift,
                      SAVE: tl.constexpr, BLOCK: tl.constexpr):
    """dx = dy * derivative; s_ptr holds x (SAVE == 0) or the uint8 code (SAVE == 1)."""
    for i in range(tiles_per_prog):
        offs = _tile(i, BLOCK)
        mask = offs < n
        dy = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if SAVE == 1:
            d = tl.load(s_ptr + offs, mask=mask, other=0).to(tl.float32) * (1.005 / 255.0) - 0.08
        else:
            x = tl.load(s_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            d = swoosh_deriv(x, shift)
        tl.store(dx_ptr + offs, (dy * d).to(dx_ptr.dtype.element_ty), mask=mask)


constexpr_order(swoosh_fwd_kernel, "SAVE", "BLOCK")  # the launchers pass them positionally
constexpr_order(swoosh_bwd_kernel, "SAVE", "BLOCK")


def _launch(n: int, element_size: int, t):
    """(grid, BLOCK, tiles per program) of the grid-stride loop."""
    block = BLOCK if INTERPRET or element_size >= 4 else 2 * BLOCK
    tiles = cdiv(n, block)
    progs = min(tiles, PROGRAMS_PER_SM * num_sms(t)) if not INTERPRET else tiles
    return (progs,), block, cdiv(tiles, progs)


def forward(x, y, code, seed: int, shift: float, offset: float) -> None:
    """x, y contiguous, same numel; code: uint8 buffer or None."""
    n = x.numel()
    grid, block, per = _launch(n, x.element_size(), x)
    save = SAVE_UINT8 if code is not None else SAVE_NONE
    swoosh_fwd_kernel.run(x, y, code if code is not None else y, n, per, seed, shift, offset, save, block, grid=grid,
                          warmup=False, num_warps=NUM_WARPS)


def backward(grad, saved, dx, shift: float, compact: bool) -> None:
    n = dx.numel()
    grid, block, per = _launch(n, dx.element_size(), dx)
    swoosh_bwd_kernel.run(grad, saved, dx, n, per, shift, SAVE_UINT8 if compact else SAVE_NONE, block, grid=grid,
                          warmup=False, num_warps=NUM_WARPS)


def aot_specs(spec, dtypes):
    """Ahead-of-time compile list for tests/aot_compile.py (spec builds one KernelSpec)."""
    out = []
    for dt in dtypes:
        ce = {"SAVE": SAVE_UINT8, "BLOCK": BLOCK if dt == "fp32" else 2 * BLOCK}
        out.append(spec(swoosh_fwd_kernel, ce, {"d_ptr": "u8"}, dt, floats=("shift", "offset"), num_warps=NUM_WARPS))
        out.append(spec(swoosh_bwd_kernel, ce, {"s_ptr": "u8"}, dt, floats=("shift",), num_warps=NUM_WARPS))
        out.append(spec(swoosh_bwd_kernel, dict(ce, SAVE=SAVE_NONE), {}, dt, floats=("shift",),
                        num_warps=NUM_WARPS, tag=dt + ",exact"))
    return out
