"""ff.nn.Linear: same parameters and results as torch.nn.Linear; the prepacked CPU path is used
only for inference and follows weight updates."""
import pytest
import torch
from torch import nn

import fastformer as ff


def test_inference_matches_and_follows_weight_updates():
    theirs = nn.Linear(96, 200)
    ours = ff.nn.Linear(96, 200)
    ours.load_state_dict(theirs.state_dict())
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.randn(3, 17, 96)
    with torch.no_grad():
        ref = torch.nn.functional.linear(x.double(), theirs.weight.double(), theirs.bias.double())
        base_err = (theirs(x).double() - ref).abs().max()
        assert (ours(x).double() - ref).abs().max() <= 4 * base_err + 1e-5
        ours.weight.mul_(2)  # in-place update: the packed cache must be rebuilt
        theirs.weight.mul_(2)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-4)
    assert ours(torch.randn(0, 96)).shape == (0, 200)


def test_single_rows_match():
    """Decoding feeds one row at a time ([1, 1, K] or [K]); it takes the packed path too."""
    theirs = nn.Linear(768, 2304)
    ours = ff.nn.Linear(768, 2304)
    ours.load_state_dict(theirs.state_dict())
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 768), torch.randn(768), torch.randn(4, 1, 768)[1]):
            ref = torch.nn.functional.linear(x.double(), theirs.weight.double(), theirs.bias.double())
            base_err = (theirs(x).double() - ref).abs().max()
            got = ours(x)
            assert got.shape == ref.shape
            assert (got.double() - ref).abs().max() <= 4 * base_err + 1e-5


def test_wrong_input_width_names_the_shape():
    ours = ff.nn.Linear(768, 64)
    with torch.inference_mode():
        for x in (torch.randn(1, 1, 700), torch.randn(3, 700)):
            with pytest.raises(ValueError, match="in_features=768"):
                ours(x)


def test_training_uses_autograd_path():
    ours = ff.nn.Linear(32, 8)
    x = torch.randn(4, 32, requires_grad=True)
    ours(x).sum().backward()
    assert ours.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(ours.weight.grad, torch.ones(8, 1) * x.detach().sum(0))


def test_bf16_runs_the_packed_path_where_the_cpu_has_native_bf16():
    from fastformer.nn import cpu_features

    if cpu_features.missing_for("bf16") is not None:
        pytest.skip(f"bf16 cannot run here: {cpu_features.missing_for('bf16')}")
    ref = nn.Linear(97, 123).bfloat16()
    ours = ff.nn.Linear.from_torch(ref)
    x = torch.randn(3, 5, 97, dtype=torch.bfloat16)
    with torch.no_grad():
        assert ours._use_packed(x, ours.weight)
        got, want = ours(x), torch.nn.functional.linear(x.double(), ref.weight.double(), ref.bias.double())
        baseline = ref(x)
    assert got.dtype == torch.bfloat16
    assert (got.double() - want).abs().max() <= 2 * (baseline.double() - want).abs().max() + 1.6e-2


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "silu"])
def test_fused_activation_matches_fp64_on_both_paths(activation):
    from fastformer.nn.activation import ACTIVATIONS

    ours = ff.nn.Linear(96, 200)
    x = torch.randn(3, 17, 96)
    want = ACTIVATIONS[activation](torch.nn.functional.linear(x.double(), ours.weight.double(), ours.bias.double()))
    with torch.no_grad():
        assert ours._use_packed(x, ours.weight)
        packed = ours(x, activation=activation)
    autograd = ours(x, activation=activation)  # weight requires grad: the F.linear path
    assert autograd.requires_grad
    for got in (packed, autograd.detach()):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="activation"):
        ff.nn.Linear(4, 4)(torch.randn(2, 4), activation="swish")


def test_built_under_inference_mode():
    with torch.inference_mode():  # parameters are inference tensors, without a version counter
        linear = ff.nn.Linear(8, 5)
        x = torch.randn(3, 8)
        assert torch.allclose(linear(x), torch.nn.functional.linear(x, linear.weight, linear.bias), atol=1e-6)


@pytest.mark.parametrize("rows", [2, 17, 64, 65])
@pytest.mark.parametrize("activation", [None, "gelu", "quick_gelu"])
def test_few_rows_run_panel_linear_and_follow_weight_updates(monkeypatch, rows, activation):
    """Inference on 2..PANEL_MAX_ROWS rows (an encoder on a short sentence) runs ff.ops' panel_linear on the weight's
    panels, more rows oneDNN; both match fp64 with the activation (fused, or applied after: quick_gelu), and both
    packs follow an in-place weight update."""
    from fastformer.nn import linear as linear_module
    from fastformer.nn.activation import ACTIVATIONS
    from fastformer.ops import panel_linear

    if not panel_linear.AVAILABLE:
        pytest.skip("this build has no panel_linear kernel (AVX2 builds only)")
    calls = []
    real = linear_module.panel_linear_checked
    monkeypatch.setattr(linear_module, "panel_linear_checked", lambda *args: calls.append(1) or real(*args))
    ours = ff.nn.Linear(96, 160)
    x = torch.randn(rows, 96)
    act = ACTIVATIONS[activation] if activation is not None else (lambda t: t)
    with torch.inference_mode():
        for scale in (1.0, 2.0):
            if scale != 1.0:
                ours.weight.mul_(scale)
            want = act(torch.nn.functional.linear(x.double(), ours.weight.double(), ours.bias.double()))
            torch.testing.assert_close(ours(x, activation=activation).double(), want, rtol=1e-5, atol=1e-5)
    assert len(calls) == (2 if rows <= panel_linear.PANEL_MAX_ROWS else 0)
