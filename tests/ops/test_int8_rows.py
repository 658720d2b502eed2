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
    q, scale, refined = int8_rows.quantize_rows_int8(x)
    want_q, want_scale, _ = int8_rows.quantize_rows_int8_ref(x)
    assert q.dtype == torch.int8 and torch.equal(q, want_q) and torch.equal(scale, want_scale)
    assert (q.to(torch.int16).abs() <= 127).all() and refined.numel() == 0  # max_crest=inf: one pass


def test_quantize_rounds_ties_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -2.5]])  # scale 1: ties at .5
    q, scale, _ = int8_rows.quantize_rows_int8(x)
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


def spiky_rows(rows, cols, spiky):
    """Gaussian rows (crest ~4); the rows in `spiky` get one channel 100x the rest (crest ~sqrt(cols): 19.2 at
    384 columns)."""
    x = torch.randn(rows, cols, dtype=torch.float64).float()
    x[spiky, torch.arange(len(spiky)) % cols] = 100.0
    return x


def test_rows_above_max_crest_get_a_residual_row():
    x = spiky_rows(9, 384, [1, 4, 5])
    q, scale, refined = int8_rows.quantize_rows_int8(x, 16.0)
    want_q, want_scale, want_refined = int8_rows.quantize_rows_int8_ref(x, 16.0)
    assert refined.tolist() == [1, 4, 5] and torch.equal(refined, want_refined)
    assert q.shape == (12, 384) and torch.equal(q[:9], want_q[:9]) and torch.equal(scale[:9], want_scale[:9])
    # the residual x - q * s may be one fused multiply-add in the kernel: its rows within one rounding step
    assert torch.allclose(scale[9:], want_scale[9:], rtol=1e-6)
    assert (q[9:].to(torch.int16) - want_q[9:]).abs().max() <= 1
    first = q[:9].float() * scale[:9, None]
    second = first[refined] + q[9:].float() * scale[9:, None]
    # one pass: the spiky rows' step is 100/127, the rest of their row (|x| ~ 1) barely survives; two passes:
    # the residual's step is <= half that / 127
    assert (second - x[refined]).abs().max() <= scale[refined].max() / 2 / 127 * 1.001
    assert (first[refined] - x[refined]).abs().max() > 10 * (second - x[refined]).abs().max()


@pytest.mark.parametrize("max_crest", [16.0, 2.0])
def test_two_pass_product_is_closer_to_fp64(max_crest):
    x, w = spiky_rows(40, 384, list(range(0, 40, 3))), torch.randn(50, 384)
    w_q, w_scale, _ = int8_rows.quantize_rows_int8_ref(w)
    want = x.double() @ (w_q.double() * w_scale.double()[:, None]).T  # exact product with the int8 weights
    errors = []
    for crest in (float("inf"), max_crest):
        q, scale, refined = int8_rows.quantize_rows_int8(x, crest)
        got = int8_rows.dequantize_rows_int32(torch._int_mm(q, w_q.t()), scale, w_scale, None, refined)
        assert got.shape == (40, 50)
        assert torch.allclose(got, int8_rows.dequantize_rows_int32_ref(torch._int_mm(q, w_q.t()), scale, w_scale,
                                                                       None, refined), rtol=1e-6, atol=1e-4)
        errors.append(((got.double() - want).norm() / want.norm()).item())
    assert errors[1] < errors[0] / 20, errors  # measured: 1.6e-2 -> 1e-4 (crest 16); -> 6e-5 (crest 2)


def test_opcheck():
    x = spiky_rows(5, 33, [2])
    torch.library.opcheck(torch.ops.fastformer.quantize_rows_int8.default, (x, 4.0))  # crest of row 2: ~5.5
    acc = torch.randint(-1000, 1000, (6, 7), dtype=torch.int32)
    for refined in (None, torch.tensor([2])):  # 6 rows of products: 6 outputs, or 5 and one residual row
        torch.library.opcheck(torch.ops.fastformer.dequantize_rows_int32.default,
                              (acc, torch.rand(6), torch.rand(7), torch.randn(7), refined))


def test_bad_input_is_an_error_not_a_crash():
    with pytest.raises(RuntimeError, match="float32"):
        int8_rows.quantize_rows_int8(torch.randn(3, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="max_crest"):
        int8_rows.quantize_rows_int8(torch.randn(3, 4), 0.0)
    with pytest.raises(RuntimeError, match="out of range"):
        int8_rows.dequantize_rows_int32(torch.zeros(3, 4, dtype=torch.int32), torch.rand(3), torch.rand(4), None,
                                        torch.tensor([2]))
    with pytest.raises(RuntimeError, match="col_scale"):
        int8_rows.dequantize_rows_int32(torch.zeros(3, 4, dtype=torch.int32), torch.rand(3), torch.rand(5))
