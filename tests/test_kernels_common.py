"""The launch helpers every reduction backward shares (kernels/_common.py), in the interpreter.

- fold_rows sums the first `rows` rows of a longer scratch buffer into up to three outputs of
  their own dtypes; fold_two_blocks folds two blocks of different row counts and widths in one
  launch (a per-sequence scale next to per-channel parameters).
- scratch_fp32 hands the same buffer back to the same thread (no allocation per call), grows it
  when asked for more, and keeps slots and threads apart.
- programs_along_rows keeps its rule: ~4 programs per SM over the whole grid, at least min_rows
  rows each, FALLBACK_SMS off the GPU.
- constexpr_names reads a kernel's trailing constexprs in signature order (through an autotuner
  too) and constexpr_order refuses a launcher's order that differs: launchers pass constexprs
  positionally.
"""
import threading

import pytest
import torch

pytest.importorskip("triton")
from zipformer_fast.kernels import _common as K  # noqa: E402


@pytest.mark.parametrize("rows, widths", [(1, (5,)), (7, (3, 300)), (70, (129, 1, 2)), (3, (1, 1, 1))])
def test_fold_rows_sums_the_leading_rows_into_each_output(rows, widths):
    g = torch.Generator().manual_seed(rows)
    L = sum(widths)
    part = torch.randn(rows * L + 37, generator=g)  # scratch is longer than the partials
    dtypes = (torch.float32, torch.float16, torch.float64)[:len(widths)]
    outs = [torch.full((w,), float("nan"), dtype=dt) for w, dt in zip(widths, dtypes)]
    K.fold_rows(part, rows, *outs)
    total = part[:rows * L].view(rows, L).double().sum(0)
    for out, expected in zip(outs, total.split(list(widths))):
        torch.testing.assert_close(out.double(), expected.to(out.dtype).double(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows_a, width_a, rows_b, width_b", [(1, 6, 2, 4), (5, 300, 15, 65), (4, 1, 1, 2)])
def test_fold_two_blocks_folds_each_block_over_its_own_rows(rows_a, width_a, rows_b, width_b):
    g = torch.Generator().manual_seed(width_a)
    offset_b = rows_a * width_a
    part = torch.randn(offset_b + rows_b * width_b + 11, generator=g)
    out_a = torch.full((width_a,), float("nan"))
    out_b = torch.full((width_b - 1,), float("nan"), dtype=torch.float16)
    out_c = torch.full((1,), float("nan"))
    K.fold_two_blocks(part, rows_a, out_a, offset_b, rows_b, out_b, out_c)
    a = part[:offset_b].view(rows_a, width_a).sum(0)
    b = part[offset_b:offset_b + rows_b * width_b].view(rows_b, width_b).sum(0)
    torch.testing.assert_close(out_a, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_b, b[:-1].half(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out_c, b[-1:], rtol=1e-5, atol=1e-6)


def test_scratch_is_reused_grown_and_kept_apart_per_slot_and_thread():
    t = torch.zeros(1)
    a = K.scratch_fp32(t, 100)
    assert a.dtype == torch.float32 and a.numel() >= 100
    assert K.scratch_fp32(t, 50).data_ptr() == a.data_ptr()  # no new allocation for a smaller ask
    grown = K.scratch_fp32(t, 1000)
    assert grown.numel() >= 1000
    assert K.scratch_fp32(t, 10).data_ptr() == grown.data_ptr()  # the grown buffer is kept
    other_slot = K.scratch_fp32(t, 10, slot=1)
    assert other_slot.data_ptr() != grown.data_ptr()
    seen = []
    worker = threading.Thread(target=lambda: seen.append(K.scratch_fp32(t, 10).data_ptr()))
    worker.start()
    worker.join()
    assert seen[0] != grown.data_ptr()


def _old_rule(rows, column_programs, on_gpu_sms, min_rows, per_sm=4):
    sms = on_gpu_sms or K.FALLBACK_SMS
    progs = per_sm * sms if on_gpu_sms else K.FALLBACK_SMS
    budget = -(-per_sm * sms // column_programs)
    return max(1, min(progs, -(-rows // min_rows), budget))


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 1000, 100000])
@pytest.mark.parametrize("column_programs", [1, 2, 3, 16, 600])
def test_programs_along_rows_off_gpu(rows, column_programs):
    t = torch.zeros(1)
    for min_rows in (2, 4, 16):
        assert K.programs_along_rows(rows, column_programs, t, min_rows) == _old_rule(rows, column_programs, 0,
                                                                                       min_rows)


def test_constexpr_order_reads_the_signature_and_refuses_another_order():
    from zipformer_fast.kernels import activation_linear, bypass

    assert K.constexpr_names(bypass.upsample_bypass_fwd_kernel) == ("DS", "BLOCK_G", "BLOCK_N")
    assert K.constexpr_names(activation_linear.act_linear_fwd_kernel) == (  # an autotuned kernel
        "HAS_BIAS", "HAS_MASK", "PRECISION", "BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
    K.constexpr_order(bypass.bypass_fwd_kernel, "BLOCK_T", "BLOCK_N")
    with pytest.raises(AssertionError, match="trailing constexprs"):
        K.constexpr_order(bypass.bypass_fwd_kernel, "BLOCK_N", "BLOCK_T")
    with pytest.raises(AssertionError, match="trailing constexprs"):
        K.constexpr_order(bypass.bypass_fwd_kernel, "BLOCK_N")
