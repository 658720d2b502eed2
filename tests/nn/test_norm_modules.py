"""ff.nn.LayerNorm / RMSNorm are drop-ins for torch.nn.LayerNorm / RMSNorm."""
import pytest
import torch
from torch import nn

import fastformer as ff
from tests.conftest import backend_device

CASES = [
    # (ours, theirs, constructor args, constructor kwargs)
    (ff.nn.LayerNorm, nn.LayerNorm, (97,), {}),
    (ff.nn.LayerNorm, nn.LayerNorm, ((4, 24),), {"eps": 1e-6}),
    (ff.nn.LayerNorm, nn.LayerNorm, (97,), {"bias": False}),
    (ff.nn.LayerNorm, nn.LayerNorm, (97,), {"elementwise_affine": False}),
    (ff.nn.RMSNorm, nn.RMSNorm, (97,), {}),
    (ff.nn.RMSNorm, nn.RMSNorm, ((4, 24),), {"eps": 1e-6}),
    (ff.nn.RMSNorm, nn.RMSNorm, (97,), {"elementwise_affine": False}),
]


@pytest.mark.parametrize("ours_cls, theirs_cls, args, kwargs", CASES)
def test_same_state_dict_results_and_grads(ours_cls, theirs_cls, args, kwargs, backend):
    device = backend_device(backend)
    theirs = theirs_cls(*args, **kwargs, device=device)
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()  # fresh, non-trivial affine parameters
    ours = ours_cls(*args, **kwargs, device=device, backend=backend)
    assert isinstance(ours, theirs_cls)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    ours.load_state_dict(theirs.state_dict())
    shape = (2, 3) + (args[0] if isinstance(args[0], tuple) else (args[0],))
    x = torch.randn(shape, device=device, requires_grad=True)
    out, want = ours(x), theirs(x)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, [x, *ours.parameters()], g)
    want_grads = torch.autograd.grad(want, [x, *theirs.parameters()], g)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_residual_keyword_and_from_torch():
    torch_ln = nn.LayerNorm(64)
    ours = ff.nn.LayerNorm.from_torch(torch_ln)
    assert ours.weight is torch_ln.weight
    x, r = torch.randn(5, 64), torch.randn(5, 64)
    out, s = ours(x, residual=r)
    torch.testing.assert_close(s, x + r)
    torch.testing.assert_close(out, torch_ln(x + r))
    rms = ff.nn.RMSNorm.from_torch(nn.RMSNorm(64))
    torch.testing.assert_close(rms(x), nn.RMSNorm(64)(x))


def test_rms_norm_default_eps_follows_input_dtype():
    x = torch.randn(4, 32, dtype=torch.bfloat16)
    torch.testing.assert_close(ff.nn.RMSNorm(32, dtype=torch.bfloat16)(x), nn.RMSNorm(32, dtype=torch.bfloat16)(x))


def test_wrong_trailing_shape_is_rejected():
    with pytest.raises(ValueError, match="normalized_shape"):
        ff.nn.LayerNorm(64)(torch.randn(2, 63))
