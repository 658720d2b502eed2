"""ff.ops.gemv (the single-row fp32 / bf16 CPU linear) against fp64 and F.linear, and ff.nn.Linear's use of it."""
import pytest
import torch
import torch.nn.functional as F

import fastformer as ff
from fastformer.nn import linear as linear_module
from fastformer.ops.gemv import AVAILABLE

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this build of fastformer._C has no gemv kernel (rebuild)")


def _assert_close_to_fp64(got, x, weight, bias):
    """Error vs the fp64 product at most 2x F.linear's own fp32 error, plus a small atol."""
    want = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    baseline = (F.linear(x, weight, bias).double() - want).abs().max()
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 2 * baseline + 1e-5 * weight.shape[1] ** 0.5


# K below, at and past the 16-float chunk; N below, at and past the 4 rows per step; GPT-2's shapes.
@pytest.mark.parametrize("K", [1, 7, 16, 17, 100, 768, 3072])
@pytest.mark.parametrize("N", [1, 3, 4, 5, 257, 1000])
@pytest.mark.parametrize("with_bias", [True, False])
def test_matches_fp64(K, N, with_bias):
    x, weight = torch.randn(K), torch.randn(N, K)
    bias = torch.randn(N) if with_bias else None
    _assert_close_to_fp64(ff.ops.gemv(x, weight, bias), x, weight, bias)



@pytest.mark.parametrize("K", [1, 31, 32, 33, 768, 3072])
@pytest.mark.parametrize("N", [1, 5, 257])
@pytest.mark.parametrize("with_bias", [True, False])
def test_bf16_matches_fp64_as_f_linear_does(K, N, with_bias):
    """bf16 inputs, fp32 accumulation, one rounding to bf16: within one bf16 rounding of the fp64 product of the same
    bf16 values, and as close as F.linear's own bf16 product (K past, at and below the 32-weight chunk)."""
    x, weight = torch.randn(K).bfloat16(), torch.randn(N, K).bfloat16()
    bias = torch.randn(N).bfloat16() if with_bias else None
    got = ff.ops.gemv(x, weight, bias)
    want = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert got.dtype == torch.bfloat16 and got.shape == (N,)
    scale = F.linear(x.double().abs(), weight.double().abs(), None if bias is None else bias.double().abs())
    error, baseline = (got.double() - want).abs(), (F.linear(x, weight, bias).double() - want).abs()
    assert (error <= 2 ** -8 * want.abs() + 1e-5 * scale).all()  # bf16 rounding + fp32 accumulation
    assert error.max() <= 2 * baseline.max() + 1e-5 * scale.max()


@pytest.mark.parametrize("K", [1, 31, 32, 33, 768])
@pytest.mark.parametrize("N", [1, 5, 1025])
@pytest.mark.parametrize("with_bias", [True, False])
def test_int8_weights_match_fp64_of_the_dequantized_weight(K, N, with_bias):
    """gemv_int8 is the fp32 product with the dequantized weight (int8 steps are exact in fp32): within 2x of
    F.linear's own fp32 error against fp64 (K past, at and below the 32-weight chunk; N past the 1024-row grain)."""
    x = torch.randn(K)
    weight_int8 = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    weight_scale, bias = torch.rand(N) / 50, torch.randn(N) if with_bias else None
    got = ff.ops.gemv_int8(x, weight_int8, weight_scale, bias)
    assert got.shape == (N,) and got.dtype == torch.float32
    want = ff.ops.gemv_int8_ref(x.double(), weight_int8, weight_scale.double(), None if bias is None else bias.double())
    baseline = (ff.ops.gemv_int8_ref(x, weight_int8, weight_scale, bias).double() - want).abs().max()
    assert (got.double() - want).abs().max() <= 2 * baseline + 1e-5 * K ** 0.5


def test_int8_opcheck_and_bad_input():
    x, weight_int8 = torch.randn(37), torch.randint(-127, 128, (29, 37), dtype=torch.int8)
    weight_scale, bias = torch.rand(29), torch.randn(29)
    torch.library.opcheck(torch.ops.fastformer.gemv_int8.default, (x, weight_int8, weight_scale, bias))
    torch.library.opcheck(torch.ops.fastformer.gemv_int8.default, (x, weight_int8, weight_scale, None))
    for args, error, match in [
        ((x, weight_int8.float(), weight_scale), TypeError, "weight_int8 must be torch.int8"),
        ((x.double(), weight_int8, weight_scale), TypeError, "x must be torch.float32"),
        ((x, weight_int8, weight_scale[:5]), ValueError, "weight_scale must be"),
        ((torch.randn(2, 37), weight_int8, weight_scale), ValueError, "one row"),
        ((x, weight_int8, weight_scale, torch.randn(3)), ValueError, "bias must be"),
        ((torch.randn(37, requires_grad=True), weight_int8, weight_scale), ValueError,
         "x requires grad: gemv_int8 is inference-only"),
        (([0.0] * 37, weight_int8, weight_scale), TypeError, "x must be a torch.Tensor"),
    ]:
        with pytest.raises(error, match=match):
            ff.ops.gemv_int8(*args)

def test_any_leading_shape_strided_weight_rows_and_strided_x():
    wide = torch.randn(300, 200)
    weight = wide[:, :123]  # row stride 200, read in place
    x = torch.randn(1, 1, 246)[..., ::2]  # one row, last dim stride 2
    got = ff.ops.gemv(x, weight)
    assert got.shape == (1, 1, 300)
    _assert_close_to_fp64(got, x, weight, None)
    transposed = torch.randn(50, 40).t()  # [40, 50] with a strided last dim: copied for the kernel
    v = torch.randn(50)
    _assert_close_to_fp64(ff.ops.gemv(v, transposed), v, transposed, None)


def test_gradients_match_f_linear():
    x, weight, bias = (torch.randn(*s, requires_grad=True) for s in ((1, 37), (29, 37), (29,)))
    y = ff.ops.gemv(x, weight, bias)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, weight, bias), grad)
    want = torch.autograd.grad(F.linear(x, weight, bias), (x, weight, bias), grad)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    x, weight, bias = torch.randn(37, dtype=dtype), torch.randn(29, 37, dtype=dtype), torch.randn(29, dtype=dtype)
    torch.library.opcheck(torch.ops.fastformer.gemv.default, (x, weight, bias))
    torch.library.opcheck(torch.ops.fastformer.gemv.default, (x, weight, None))


def test_compiles_fullgraph():
    x, weight, bias = torch.randn(1, 64), torch.randn(48, 64), torch.randn(48)
    compiled = torch.compile(ff.ops.gemv, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, weight, bias), ff.ops.gemv(x, weight, bias))


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(2, 8), torch.randn(4, 8), None), ValueError, "one row"),
    ((torch.randn(7), torch.randn(4, 8), None), ValueError, "x must hold one row"),
    ((torch.randn(8), torch.randn(4, 8, 1), None), ValueError, "weight must be"),
    ((torch.randn(8), torch.randn(4, 8), torch.randn(5)), ValueError, "bias must be"),
    ((torch.randn(8).double(), torch.randn(4, 8), None), TypeError, "x must be float32"),
    ((torch.randn(8), torch.randn(4, 8).half(), None), TypeError, "weight must be float32"),
    ((torch.randn(8), torch.randn(4, 8).bfloat16(), None), TypeError, "weight must have x's dtype"),
    ((torch.randn(8).bfloat16(), torch.randn(4, 8).bfloat16(), torch.randn(4)), TypeError, "bias must have x's"),
    (([0.0] * 8, torch.randn(4, 8), None), TypeError, "x must be a torch.Tensor"),
])
def test_bad_input_is_named(args, error, match):
    with pytest.raises(error, match=match):
        ff.ops.gemv(*args)


@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_runs_single_rows_through_gemv(activation, dtype, monkeypatch):
    """Single rows take the kernel in fp32, and in bf16 where ff.nn.Linear runs bf16 on oneDNN (native bf16 dot
    products); other inputs keep oneDNN."""
    if dtype == torch.bfloat16 and ff.nn.cpu_features.missing_for("bf16") is not None:
        pytest.skip(ff.nn.cpu_features.missing_for("bf16"))
    linear = ff.nn.Linear(96, 200).to(dtype)
    calls = []
    real = linear_module.gemv_checked
    monkeypatch.setattr(linear_module, "gemv_checked", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(1, 1, 96, dtype=dtype)
    with torch.no_grad():
        got = linear(x, activation=activation)
        linear(torch.randn(2, 96, dtype=dtype))  # two rows: oneDNN
    assert calls == [(1, 1, 96)]
    want = F.linear(x, linear.weight, linear.bias)
    if activation is not None:
        from fastformer.nn.activation import ACTIVATIONS
        want = ACTIVATIONS[activation](want)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: both round their fp32 sums once
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
