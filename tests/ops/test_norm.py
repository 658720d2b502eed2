"""layer_norm and rms_norm on every backend available here, against fp64 references.

The two ops share kernels (one template / Triton kernel with IS_RMS), so they share these tests.
"""
import pytest
import torch
import torch.nn.functional as F

import fastformer as ff
from tests.conftest import backend_device
from tests.tolerance import assert_as_accurate

OPS = {
    "layer_norm": (ff.ops.layer_norm, ff.ops.layer_norm_ref, True),
    "rms_norm": (ff.ops.rms_norm, ff.ops.rms_norm_ref, False),
}
# 1 and 97: tiny / odd; 384, 1000, 1025: BERT-ish and around powers of two; 4099: past 4096;
# 16411: past the Triton single-tile limit (16384), exercising the looped kernels.
WIDTHS = [1, 97, 384, 1000, 1025, 4099, 16411]


def _inputs(op_name, rows, n, dtype, device, *, residual=True, affine=True):
    x = torch.randn(rows, n, dtype=dtype, device=device)
    r = torch.randn(rows, n, dtype=dtype, device=device) if residual else None
    w = (1 + 0.5 * torch.randn(n, dtype=dtype, device=device)) if affine else None
    b = torch.randn(n, dtype=dtype, device=device) if affine and OPS[op_name][2] else None
    return x, r, w, b


def _call(fn, x, r, w, b, **kw):
    kwargs = dict(residual=r, **kw)
    return fn(x, w, b, **kwargs) if b is not None or fn in (ff.ops.layer_norm, ff.ops.layer_norm_ref) else fn(x, w, **kwargs)


def _as64(*ts):
    return [t.double() if t is not None else None for t in ts]


def _rows_for(backend):
    # The Triton interpreter costs ~1 ms per program instance and more per wide tile.
    return 3 if backend == "triton" and not torch.cuda.is_available() else 37


@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("n", WIDTHS)
def test_forward_matches_fp64(op_name, backend, dtype, n):
    device = backend_device(backend)
    fn, ref, _ = OPS[op_name]
    x, r, w, b = _inputs(op_name, _rows_for(backend), n, dtype, device)
    out, s = _call(fn, x, r, w, b, backend=backend)
    ref_out, ref_s = _call(ref, *_as64(x, r, w, b))
    base_out, base_s = _call(ref, x, r, w, b)
    assert out.dtype == dtype and s.dtype == dtype
    assert_as_accurate(s, base_s, ref_s, dtype, name="x + residual")
    assert_as_accurate(out, base_out, ref_out, dtype, name=op_name)


@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("affine", [True, False])
def test_without_residual_and_affine(op_name, backend, affine):
    device = backend_device(backend)
    fn, ref, _ = OPS[op_name]
    x, _, w, b = _inputs(op_name, 5, 97, torch.float32, device, residual=False, affine=affine)
    out = _call(fn, x, None, w, b, backend=backend)
    assert isinstance(out, torch.Tensor)
    assert_as_accurate(out, _call(ref, x, None, w, b), _call(ref, *_as64(x, None, w, b)), torch.float32)


@pytest.mark.parametrize("op_name", OPS)
def test_strided_and_batched_inputs(op_name, backend):
    device = backend_device(backend)
    fn, ref, _ = OPS[op_name]
    n = 97
    # A row-strided view (no copy needed), a view with a strided last dim (copied), and a 3-D batch.
    wide = torch.randn(2, 3, 2 * n + 5, device=device)
    x = wide[..., 3:3 + n]  # [2, 3, n], row stride 2n+5
    r = torch.randn(2, n, 3, device=device).transpose(1, 2)  # [2, 3, n], last-dim stride 3
    _, _, w, b = _inputs(op_name, 1, n, torch.float32, device)
    out, s = _call(fn, x, r, w, b, backend=backend)
    ref_out, ref_s = _call(ref, *_as64(x, r, w, b))
    assert out.shape == x.shape
    assert_as_accurate(out, _call(ref, x, r, w, b)[0], ref_out, torch.float32)
    assert_as_accurate(s, _call(ref, x, r, w, b)[1], ref_s, torch.float32)


@pytest.mark.parametrize("op_name", OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [97, 1025, 16411])
def test_backward_matches_fp64(op_name, backend, dtype, n):
    device = backend_device(backend)
    fn, ref, _ = OPS[op_name]
    rows = 3 if n > 4096 or backend == "triton" else 19
    leaves = [t.requires_grad_() if t is not None else None for t in _inputs(op_name, rows, n, dtype, device)]
    leaves64 = [t.detach().double().requires_grad_() if t is not None else None for t in leaves]
    leaves_base = [t.detach().clone().requires_grad_() if t is not None else None for t in leaves]
    grad_out = torch.randn(rows, n, dtype=dtype, device=device)
    grad_s = torch.randn(rows, n, dtype=dtype, device=device)

    def grads(fn_, ts, **kw):
        out, s = _call(fn_, *ts, **kw)
        live = [t for t in ts if t is not None]
        return torch.autograd.grad((out * grad_out.to(out.dtype)).sum() + (s * grad_s.to(s.dtype)).sum(), live)

    ours = grads(fn, leaves, backend=backend)
    ref64 = grads(ref, leaves64)
    base = grads(ref, leaves_base)
    for name, g, gb, g64 in zip(("x", "residual", "weight", "bias"), ours, base, ref64):
        # grad_weight / grad_bias sum over rows: PyTorch's low-precision sum order differs from ours.
        assert_as_accurate(g, gb, g64, dtype, factor=2.0 if name in ("x", "residual") else 4.0, name=f"grad {name}")


@pytest.mark.parametrize("op_name", OPS)
def test_gradcheck_fp64(op_name, backend):
    device = backend_device(backend)
    if backend == "cuda":
        pytest.skip("the CUDA kernels have no fp64 path; covered by test_backward_matches_fp64")
    fn, _, _ = OPS[op_name]
    leaves = [t.requires_grad_() if t is not None else None
              for t in _inputs(op_name, 3, 11, torch.float64, device)]
    x, r, w, b = leaves
    live = [t for t in leaves if t is not None]

    def f(*ts):
        it = iter(ts)
        x_, r_, w_ = next(it), next(it), next(it)
        b_ = next(it) if b is not None else None
        return _call(fn, x_, r_, w_, b_, backend=backend)

    # fast_mode checks random projections of the Jacobian: a few kernel launches instead of one per
    # input element, which matters for the interpreted Triton kernels (~1 ms per program).
    assert torch.autograd.gradcheck(f, live, eps=1e-6, atol=1e-6, fast_mode=backend == "triton")


@pytest.mark.parametrize("op_name", OPS)
def test_opcheck(op_name, backend):
    device = backend_device(backend)
    if backend == "reference":
        pytest.skip("the reference backend is plain PyTorch, not a registered op")
    suffix = "_triton" if backend == "triton" else ""
    op = getattr(torch.ops.fastformer, f"{op_name}_fwd{suffix}").default
    x, r, w, b = [t.requires_grad_() if t is not None else None for t in _inputs(op_name, 4, 97, torch.float32, device)]
    args = (x, r, w, b, 1e-5) if op_name == "layer_norm" else (x, r, w, 1e-5)
    torch.library.opcheck(op, args)
    args_no_residual = (x, None, None, None, 1e-5) if op_name == "layer_norm" else (x, None, None, 1e-5)
    torch.library.opcheck(op, args_no_residual)


@pytest.mark.slow
@pytest.mark.parametrize("backend_name", ["cpu", "triton"])
def test_compile_fullgraph_forward_and_backward(backend_name):
    device = backend_device(backend_name)
    x, r, w, b = [t.requires_grad_() for t in _inputs("layer_norm", 4, 97, torch.float32, device)]

    def block(x, r, w, b):
        out, s = ff.ops.layer_norm(x, w, b, residual=r, backend=backend_name)
        return ff.ops.rms_norm(out, w, residual=s, backend=backend_name)[0]

    compiled = torch.compile(block, fullgraph=True)
    got = compiled(x, r, w, b)
    want = block(x, r, w, b)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got.sum(), (x, w))
    g_want = torch.autograd.grad(want.sum(), (x, w))
    torch.testing.assert_close(g_got, g_want)


def test_empty_batch_gives_empty_output(backend):
    device = backend_device(backend)
    x = torch.randn(0, 64, device=device)
    assert ff.ops.layer_norm(x, backend=backend).shape == (0, 64)
    out, s = ff.ops.rms_norm(x, residual=torch.randn(0, 64, device=device), backend=backend)
    assert out.shape == s.shape == (0, 64)


def test_auto_backend_and_env_override(monkeypatch):
    x = torch.randn(3, 16)
    auto = ff.ops.layer_norm(x)
    torch.testing.assert_close(auto, F.layer_norm(x, (16,)))
    monkeypatch.setenv("FASTFORMER_BACKEND", "reference")
    torch.testing.assert_close(ff.ops.layer_norm(x), F.layer_norm(x, (16,)))
    monkeypatch.setenv("FASTFORMER_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="backend"):
        ff.ops.layer_norm(x)


@pytest.mark.parametrize("call, error, match", [
    (lambda x: ff.ops.layer_norm(x, torch.randn(15)), ValueError, "weight must have shape"),
    (lambda x: ff.ops.layer_norm(x, None, torch.randn(16, dtype=torch.float64)), TypeError, "bias must have the dtype"),
    (lambda x: ff.ops.layer_norm(x, residual=torch.randn(3, 15)), ValueError, "residual must have shape"),
    (lambda x: ff.ops.layer_norm(x, eps=0.0), ValueError, "eps"),
    (lambda x: ff.ops.rms_norm(x, eps=-1e-6), ValueError, "eps"),
    (lambda x: ff.ops.layer_norm(x.to(torch.int32)), TypeError, "x must be"),
    (lambda x: ff.ops.layer_norm(x[:, :0]), ValueError, "non-empty last dimension"),
    (lambda x: ff.ops.layer_norm(x, residual=x.to("meta")), ValueError, "residual must be on the same device"),
    (lambda x: ff.ops.layer_norm(x, "w"), TypeError, "weight must be a torch.Tensor"),
    (lambda x: ff.ops.layer_norm(x, backend="gpu"), ValueError, "backend must be one of"),
    (lambda x: ff.ops.layer_norm(x, backend="cuda"), ValueError, "backend='cuda' is not available"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(3, 16))
