"""ff.nn.Softmax is a drop-in torch.nn.Softmax: same constructor, repr, state_dict and results."""
import warnings

import pytest
import torch

import fastformer as ff
from tests.conftest import backend_device


def test_is_a_torch_softmax():
    module = ff.nn.Softmax(dim=-1)
    assert isinstance(module, torch.nn.Softmax)
    assert repr(module) == repr(torch.nn.Softmax(dim=-1))
    assert module.state_dict() == torch.nn.Softmax(dim=-1).state_dict() == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
def test_same_results_as_torch(backend, dtype, dim):
    device = backend_device(backend)
    x = (torch.randn(3, 5, 97, device=device) * 3).to(dtype)
    torch.testing.assert_close(ff.nn.Softmax(dim=dim, backend=backend)(x), torch.nn.Softmax(dim=dim)(x))


def test_from_torch():
    ours = ff.nn.Softmax.from_torch(torch.nn.Softmax(dim=1), backend="reference")
    assert isinstance(ours, torch.nn.Softmax) and ours.dim == 1 and ours.backend == "reference"
    x = torch.randn(2, 7, 3)
    torch.testing.assert_close(ours(x), torch.softmax(x, 1))


@pytest.mark.parametrize("shape", [(), (7,), (3, 7), (2, 3, 7), (2, 3, 4, 7)], ids=str)
def test_dim_none_is_torch_legacy_choice(shape):
    x = torch.randn(shape)
    with pytest.warns(UserWarning, match="Implicit dimension choice"):
        ours = ff.nn.Softmax()(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.nn.Softmax()(x)
    torch.testing.assert_close(ours, expected)


def test_backward_matches_torch():
    x = torch.randn(4, 33, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(4, 33, dtype=torch.float64)
    (ours,) = torch.autograd.grad(ff.nn.Softmax(dim=1)(x), x, grad_out)
    (expected,) = torch.autograd.grad(torch.nn.Softmax(dim=1)(x), x, grad_out)
    torch.testing.assert_close(ours, expected)


def test_runs_the_fastformer_op(monkeypatch):
    calls = []
    real = ff.ops.softmax
    monkeypatch.setattr(ff.ops, "softmax", lambda *args, **kwargs: calls.append(args) or real(*args, **kwargs))
    ff.nn.Softmax(dim=-1)(torch.randn(2, 5))
    assert len(calls) == 1
