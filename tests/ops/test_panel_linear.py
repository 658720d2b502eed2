"""ff.ops panel_linear (the fp32 linear of a few rows on the weight packed in column panels) against its fp64
reference over row counts around the 6-row tiles, odd K, every activation, leading dims and empty inputs;
torch.library.opcheck; and its argument errors. ff.nn.Linear's use of it is tested in tests/nn/test_linear.py."""
import pytest
import torch

from fastformer.ops import panel_linear as pl

pytestmark = pytest.mark.skipif(not pl.AVAILABLE, reason="this build has no panel_linear kernel (AVX2 builds only)")


def fp64_error_bound(x, weight, bias):
    """What fp32 accumulation in another order may miss by: K roundings of the largest partial sum."""
    scale = (x.abs().double() @ weight.abs().double().t()).max() + (bias.abs().max() if bias is not None else 0)
    return float(x.shape[-1] * torch.finfo(torch.float32).eps * scale) + 1e-6


@pytest.mark.parametrize("rows", [1, 2, 5, 6, 7, 12, 13, 18, 31, 64])
@pytest.mark.parametrize("k", [1, 37, 384])
@pytest.mark.parametrize("activation", sorted(pl.ACTIVATIONS))
def test_matches_fp64_reference(rows, k, activation):
    gen = torch.Generator().manual_seed(rows * 1000 + k)
    x, weight, bias = (torch.randn(rows, k, generator=gen), torch.randn(48, k, generator=gen) / k ** 0.5,
                       torch.randn(48, generator=gen))
    got = pl.panel_linear(x, pl.pack_panels(weight), bias, activation)
    want = pl.panel_linear_ref(x.double(), weight.double(), bias.double(), activation)
    assert got.shape == (rows, 48) and got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= fp64_error_bound(x, weight, bias)


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_every_thread_activates_its_band(mode):
    """Wide enough for both threads' bands (each thread activates its own tiles), under inference_mode or no_grad."""
    weight, bias, x = torch.randn(4096, 64), torch.randn(4096), torch.randn(18, 64)
    context = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with context:
        got = pl.panel_linear(x, pl.pack_panels(weight), bias, "gelu")
    want = pl.panel_linear_ref(x.double(), weight.double(), bias.double(), "gelu")
    assert (got.double() - want).abs().max() <= fp64_error_bound(x, weight, bias)


@pytest.mark.parametrize("activation", sorted(pl.ACTIVATIONS))
def test_activation_alone_over_a_wide_range(activation):
    """Through an identity weight (each output is one input times 1, exact), the activation's own error against fp64
    over [-12, 12] and far out: GELU's erf approximation (Abramowitz & Stegun 7.1.26, 1.5e-7) and the inlined exp
    stay within 5e-7 absolute, tails included (ATen's fp32 at::gelu is off by 9.8e-7 on these inputs)."""
    x = torch.cat([torch.linspace(-12, 12, 4096), torch.tensor([-1e4, -88.0, -80.0, -30.0, 30.0, 88.0, 1e4, 0.0] * 2)])
    x = x.reshape(-1, 16)  # [257, 16]
    got = pl.panel_linear(x, pl.pack_panels(torch.eye(16)), None, activation)
    want = pl.panel_linear_ref(x.double(), torch.eye(16, dtype=torch.float64), None, activation)
    error = (got.double() - want).abs() / want.abs().clamp_min(1.0)  # absolute below 1, relative above
    assert error.max() <= 5e-7


def test_no_bias_leading_dims_and_empty_inputs():
    weight = torch.randn(32, 24)
    panels = pl.pack_panels(weight)
    x = torch.randn(2, 3, 24)
    torch.testing.assert_close(pl.panel_linear(x, panels), torch.nn.functional.linear(x, weight), rtol=1e-5,
                               atol=1e-5)
    assert pl.panel_linear(torch.randn(0, 24), panels).shape == (0, 32)
    empty_k = pl.pack_panels(torch.randn(16, 0))
    torch.testing.assert_close(pl.panel_linear(torch.randn(3, 0), empty_k, torch.ones(16), "relu"), torch.ones(3, 16))


def test_panels_hold_the_weight_columns_in_order():
    weight = torch.arange(32 * 3, dtype=torch.float32).view(32, 3)
    panels = pl.pack_panels(weight)  # [2, 3, 16]
    assert panels.shape == (2, 3, 16)
    assert torch.equal(panels[1, 2], weight[16:32, 2])


def test_opcheck():
    panels = pl.pack_panels(torch.randn(32, 20))
    torch.library.opcheck(torch.ops.fastformer.panel_linear.default, (torch.randn(5, 20), panels, torch.randn(32),
                                                                        "gelu"),
                          test_utils=("test_schema", "test_faketensor"))
    torch.library.opcheck(torch.ops.fastformer.pack_panels.default, (torch.randn(32, 20),),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("call, error, match", [
    (lambda: pl.pack_panels(torch.randn(20, 8)), ValueError, "N a multiple of 16"),
    (lambda: pl.pack_panels(torch.randn(32, 8, dtype=torch.float64)), TypeError, "weight must be torch.float32"),
    (lambda: pl.panel_linear(torch.randn(3, 9), pl.pack_panels(torch.randn(16, 8))), ValueError,
     r"x must be \[..., K=8\]"),
    (lambda: pl.panel_linear(torch.randn(3, 8), torch.randn(16, 8)), ValueError, r"panels must be \[N / 16, K, 16\]"),
    (lambda: pl.panel_linear(torch.randn(3, 8), pl.pack_panels(torch.randn(16, 8)), torch.randn(15)), ValueError,
     r"bias must be \[N=16\]"),
    (lambda: pl.panel_linear(torch.randn(3, 8), pl.pack_panels(torch.randn(16, 8)), activation="tanh"), ValueError,
     "activation must be one of"),
    (lambda: pl.panel_linear(torch.randn(3, 8).half(), pl.pack_panels(torch.randn(16, 8))), TypeError,
     "x must be torch.float32"),
    (lambda: pl.panel_linear(torch.randn(3, 8, requires_grad=True), pl.pack_panels(torch.randn(16, 8))), ValueError,
     "x requires grad: panel_linear is inference-only"),
])
def test_bad_arguments_name_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()
