"""The int8 row kernels (csrc/cpu/int8_rows.cpp) against their ATen references."""
import pytest
import torch

from fastformer.ops import int8_rows


@pytest.mark.parametrize("rows, cols", [(1, 1), (3, 97), (130, 1025), (0, 16)])
def test_quantize_matches_reference_bit_for_bit(rows, cols):
    x = torch.randn(rows, cols + 3)[:, 2:-1] * torch.rand(cols) * 5  # row stride != cols
    x[:, :1] = 0
    if rows:
        x[0] = 0  # an all-zero row
    q, scale = int8_rows.quantize_rows_int8(x)
    want_q, want_scale = int8_rows.quantize_rows_int8_ref(x)
    assert q.dtype == torch.int8 and torch.equal(q, want_q) and torch.equal(scale, want_scale)
    assert (q.to(torch.int16).abs() <= 127).all()


def test_quantize_rounds_ties_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]])  # scale 1: ties at .5
    q, scale = int8_rows.quantize_rows_int8(x)
    assert scale.item() == 1.0 and q.tolist() == [[127, 0, 2, 2, 0, -2]]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("rows, cols", [(1, 123), (37, 1000), (0, 5)])
def test_dequantize_matches_reference(rows, cols, bias):
    acc = torch.randint(-2**24, 2**24, (rows, cols), dtype=torch.int32)
    row_scale, col_scale = torch.rand(rows) / 127, torch.rand(cols) / 127
    b = torch.randn(cols) if bias else None
    got = int8_rows.dequantize_rows_int32(acc, row_scale, col_scale, b)
    want = int8_rows.dequantize_rows_int32_ref(acc.double(), row_scale.double(), col_scale.double(),
                                               b.double() if bias else None)
    baseline = int8_rows.dequantize_rows_int32_ref(acc, row_scale, col_scale, b)
    assert got.dtype == torch.float32 and got.shape == (rows, cols)
    if rows:  # as accurate as the ATen fp32 ops (an FMA may round once instead of twice)
        assert (got.double() - want).abs().max() <= 2 * (baseline.double() - want).abs().max() + 1e-6


def test_opcheck():
    x = torch.randn(5, 33)
    torch.library.opcheck(torch.ops.fastformer.quantize_rows_int8.default, (x,))
    acc = torch.randint(-1000, 1000, (5, 7), dtype=torch.int32)
    torch.library.opcheck(torch.ops.fastformer.dequantize_rows_int32.default,
                          (acc, torch.rand(5), torch.rand(7), torch.randn(7)))


def test_bad_input_is_an_error_not_a_crash():
    with pytest.raises(RuntimeError, match="float32"):
        int8_rows.quantize_rows_int8(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="col_scale"):
        int8_rows.dequantize_rows_int32(torch.zeros(3, 4, dtype=torch.int32), torch.rand(3), torch.rand(5))
