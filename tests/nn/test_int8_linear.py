"""Int8Linear against the quantized product computed in fp64 (same rounding), and against the float layer
within the error bound that int8 rounding allows."""
import pytest
import torch

from fastformer.nn import cpu_features
from fastformer.nn.int8_linear import Int8Linear
from tests.tolerance import max_err

pytestmark = pytest.mark.skipif(cpu_features.missing_for("int8") is not None,
                                reason=f"int8 cannot run here: {cpu_features.missing_for('int8')}")


def quantized_reference(x, weight, bias):
    """fp64: per-token activations and per-channel weights rounded to int8 steps, multiplied exactly."""
    x, weight = x.double(), weight.double()
    sx = x.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    sw = weight.abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    y = (torch.round(x / sx) * sx) @ (torch.round(weight / sw) * sw).T
    return y + bias.double() if bias is not None else y


def weight_only_reference(x, weight, bias):
    """fp64: per-channel weights rounded to int8 steps, x as it is (a single row's product)."""
    sw = weight.double().abs().amax(-1, keepdim=True).clamp_min(1e-12) / 127
    y = x.double() @ (torch.round(weight.double() / sw) * sw).T
    return y + bias.double() if bias is not None else y


@pytest.mark.parametrize("shape", [(1, 97), (1, 1, 97), (3, 5, 97), (130, 97), (0, 97)])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_quantized_reference_and_float_bound(shape, bias):
    """Rows quantized per token against int8 weights; a single row (a decode step) weight-only, x unrounded."""
    linear = torch.nn.Linear(97, 123, bias=bias)
    quantized = Int8Linear.from_float(linear.weight, linear.bias)
    x = torch.randn(*shape) * torch.rand(97) * 3  # channels of different ranges, as activations have
    with torch.no_grad():
        got, exact = quantized(x), linear(x)
    assert got.shape == exact.shape and got.dtype == torch.float32
    single_row = x.numel() == 97
    want = (weight_only_reference if single_row else quantized_reference)(x, linear.weight, linear.bias)
    assert max_err(got, want) <= 1e-5 * max(1.0, max_err(want, torch.zeros_like(want)))
    # Each rounding moves a factor by at most half a step: |dy| <= sum_k |x_k| sw/2 + |w_k| sx/2 (+ product).
    sx = x.abs().amax(-1, keepdim=True) / 127
    sw = linear.weight.detach().abs().amax(-1) / 127
    bound = x.abs() @ (sw[:, None].expand(-1, 97) / 2).T + (sx / 2) * linear.weight.detach().abs().sum(-1) \
        + (sx / 2) * (sw / 2) * 97
    assert ((got - exact).abs() <= bound + 1e-5).all()


def test_zero_rows_and_zero_channels():
    weight = torch.randn(8, 16)
    weight[3] = 0
    quantized = Int8Linear.from_float(weight)
    x = torch.randn(4, 16)
    x[1] = 0
    got = quantized(x)
    assert torch.isfinite(got).all() and (got[1] == 0).all() and (got[:, 3] == 0).all()


def test_state_dict_round_trip():
    quantized = Int8Linear.from_float(torch.randn(6, 10), torch.randn(6))
    again = Int8Linear(10, 6)
    again.load_state_dict(quantized.state_dict())
    x = torch.randn(3, 10)
    assert torch.equal(again(x), quantized(x))
    assert quantized.weight_int8.dtype == torch.int8 and "int8" in repr(quantized)


def test_bad_input():
    quantized = Int8Linear.from_float(torch.randn(6, 10))
    with pytest.raises(TypeError, match="float32"):
        quantized(torch.randn(2, 10, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="in_features=10"):
        quantized(torch.randn(2, 9))
    with pytest.raises(RuntimeError, match="inference-only"):
        quantized(torch.randn(2, 10, requires_grad=True))
    with pytest.raises(ValueError, match="weight must be"):
        Int8Linear.from_float(torch.randn(6))
