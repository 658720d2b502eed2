"""ff.ops.softmax on every backend against an fp64 reference (error at most 2x PyTorch's own + atol).

The `backend` fixture (tests/conftest.py) runs each test on cpu, triton, cuda and reference, skipping
visibly where a backend cannot run; Triton runs interpreted on CPU tensors when there is no GPU.
"""
import pytest
import torch

import fastformer as ff
from fastformer.kernels import softmax as triton_softmax
from fastformer.ops.softmax import _as_4d, softmax_ref
from tests.conftest import backend_device
from tests.tolerance import ATOL, assert_as_accurate

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _interpreted(backend: str, device: torch.device) -> bool:
    """The Triton interpreter costs ~1 ms per program instance: such tests keep rows few."""
    return backend == "triton" and device.type == "cpu"


def _randn(*shape, dtype=torch.float32, device="cpu", std=3.0):
    return (torch.randn(shape, dtype=torch.float64) * std).to(device=device, dtype=dtype)


def _padding_mask(*shape, device="cpu", keep=0.7):
    return torch.rand(*shape, device=device) < keep


def _upcast(t):
    return t.double() if t is not None and t.is_floating_point() else t


def assert_matches_reference(out, x, dim=-1, scale=1.0, mask=None, causal=False):
    """out's error vs the fp64 reference is at most 2x that of PyTorch in x's dtype, plus ATOL."""
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    expected = softmax_ref(x.double(), dim, scale, _upcast(mask), causal)
    assert_as_accurate(out, softmax_ref(x, dim, scale, mask, causal), expected, x.dtype, name="softmax")


# ---- forward accuracy ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 17, 97, 384, 1000, 1025, 4100])
def test_matches_reference(backend, dtype, n):
    device = backend_device(backend)
    rows = 3 if _interpreted(backend, device) else 37
    x = _randn(rows, n, dtype=dtype, device=device)
    mask = _randn(n, dtype=torch.float32, device=device, std=1.0)
    assert_matches_reference(ff.ops.softmax(x, scale=0.3, mask=mask, backend=backend), x, scale=0.3, mask=mask)
    assert_matches_reference(ff.ops.softmax(x, backend=backend), x)


@pytest.mark.parametrize("mask_dtype", ["bool", "float32", "x"])
def test_mask_dtypes(backend, mask_dtype):
    device = backend_device(backend)
    x = _randn(2, 3, 97, dtype=torch.bfloat16, device=device)
    mask = {
        "bool": _padding_mask(3, 97, device=device),
        "float32": _randn(3, 97, device=device, std=1.0),
        "x": _randn(3, 97, dtype=torch.bfloat16, device=device, std=1.0),
    }[mask_dtype]
    assert_matches_reference(ff.ops.softmax(x, scale=0.5, mask=mask, backend=backend), x, scale=0.5, mask=mask)


@pytest.mark.parametrize("dim", [0, 1, -2])
def test_dim_not_last(backend, dim):
    device = backend_device(backend)
    x = _randn(4, 7, 5, device=device)
    mask = _randn(7, 1, device=device, std=1.0)  # broadcasts to x
    out = ff.ops.softmax(x, dim=dim, scale=0.7, mask=mask, backend=backend)
    assert_matches_reference(out, x, dim=dim, scale=0.7, mask=mask)


@pytest.mark.parametrize("layout", ["strided_last_dim", "transposed_rows", "sliced_rows", "expanded"])
def test_non_contiguous_x(backend, layout):
    device = backend_device(backend)
    base = _randn(6, 5, 34, device=device)
    x = {
        "strided_last_dim": base[..., ::2],  # [6, 5, 17], last stride 2
        "transposed_rows": base.transpose(0, 1),  # [5, 6, 34]
        "sliced_rows": base[1:5, ::2, 3:20],  # [4, 3, 17]
        "expanded": base[:1, :1].expand(3, 2, 34),  # rows with stride 0
    }[layout]
    mask = _padding_mask(x.shape[-2], x.shape[-1], device=device)
    out = ff.ops.softmax(x, mask=mask, backend=backend)
    assert_matches_reference(out, x, mask=mask)


# ---- masks and causal ----------------------------------------------------------------------------

MASK_SHAPES = {
    "padding [B,1,1,N]": (2, 1, 1, 17),
    "per-position [1,1,M,N]": (1, 1, 5, 17),
    "full [B,H,M,N]": (2, 3, 5, 17),
    "keys [N]": (17,),
    "rows [B,H,M,1]": (2, 3, 5, 1),
}


@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("mask_shape", list(MASK_SHAPES.values()), ids=list(MASK_SHAPES))
def test_mask_broadcasts(backend, kind, mask_shape):
    device = backend_device(backend)
    x = _randn(2, 3, 5, 17, device=device)  # [B, H, M, N]
    if kind == "bool":
        mask = _padding_mask(*mask_shape, device=device)
    else:
        mask = torch.where(_padding_mask(*mask_shape, device=device), _randn(*mask_shape, device=device, std=1.0),
                           float("-inf"))
    out = ff.ops.softmax(x, scale=0.25, mask=mask, backend=backend)
    assert_matches_reference(out, x, scale=0.25, mask=mask)


def test_non_contiguous_mask(backend):
    device = backend_device(backend)
    x = _randn(2, 5, 17, device=device)
    mask = _randn(17, 5, device=device, std=1.0).t()  # [5, 17], column stride 5
    assert_matches_reference(ff.ops.softmax(x, mask=mask, backend=backend), x, mask=mask)


def test_broadcast_mask_is_not_materialized():
    x = _randn(2, 3, 4, 5, 17)  # [B, H, G, M, N]: more than four dims, so leading dims are merged
    mask = _padding_mask(2, 1, 1, 1, 17)
    x4, mask4 = _as_4d(x, mask.expand(x.shape), causal=False)
    assert x4.data_ptr() == x.data_ptr() and mask4.data_ptr() == mask.data_ptr()
    assert mask4.shape == (1, 2, 60, 17) and mask4.stride(2) == 0  # H, G, M merged, broadcast
    x4, mask4 = _as_4d(x, mask.expand(x.shape), causal=True)
    assert x4.data_ptr() == x.data_ptr() and mask4.data_ptr() == mask.data_ptr()
    assert mask4.shape == (2, 12, 5, 17) and mask4.stride()[1:3] == (0, 0)  # M on its own for causal
    x4, mask4 = _as_4d(x[0, 0], mask.expand(x.shape)[0, 0], causal=False)  # [4, 5, 17]: prepend a dim
    assert x4.shape == (1, 4, 5, 17) and mask4.stride() == (0, 0, 0, 1)


@pytest.mark.parametrize("m, n", [(5, 9), (9, 5), (1, 7), (6, 6), (4, 1025)])
def test_causal(backend, m, n):
    device = backend_device(backend)
    x = _randn(2, m, n, device=device)
    out = ff.ops.softmax(x, scale=0.5, causal=True, backend=backend)
    assert_matches_reference(out, x, scale=0.5, causal=True)
    keep = torch.ones(m, n, dtype=torch.bool, device=device).tril(n - m)  # j <= i + N - M
    assert (out[:, ~keep] == 0).all()


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_mask_and_causal(backend, kind):
    device = backend_device(backend)
    x = _randn(2, 3, 6, 11, device=device)
    keep = _padding_mask(2, 1, 1, 11, device=device)
    mask = keep if kind == "bool" else torch.where(keep, _randn(2, 1, 1, 11, device=device, std=1.0), float("-inf"))
    out = ff.ops.softmax(x, scale=0.5, mask=mask, causal=True, backend=backend)
    assert_matches_reference(out, x, scale=0.5, mask=mask, causal=True)


@pytest.mark.parametrize("kind", ["bool", "additive_neg_inf", "causal_and_bool"])
def test_fully_masked_rows_are_zero(backend, kind):
    device = backend_device(backend)
    x = _randn(3, 4, 33, device=device)
    keep = _padding_mask(3, 4, 33, device=device)
    keep[0, 1] = False
    keep[2] = False
    causal = kind == "causal_and_bool"
    if causal:
        keep[1, :, :32] = False  # rows i <= 2 of batch 1 keep only columns j <= i + 29: all dropped
    mask = torch.where(keep, 0.0, float("-inf")).to(device) if kind == "additive_neg_inf" else keep
    out = ff.ops.softmax(x, mask=mask, causal=causal, backend=backend)
    assert not out.isnan().any()
    assert (out[0, 1] == 0).all() and (out[2] == 0).all()
    if causal:
        assert (out[1, :3] == 0).all()
    assert_matches_reference(out, x, mask=mask, causal=causal)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy on inf * 0
def test_bool_mask_ignores_nan_and_inf_at_dropped_positions(backend):
    device = backend_device(backend)
    x = _randn(4, 19, device=device)
    keep = _padding_mask(4, 19, device=device)
    keep[:, 0] = True
    x[~keep] = float("nan")
    x[~keep & (torch.arange(19, device=device) % 2 == 0)] = float("inf")
    out = ff.ops.softmax(x, mask=keep, backend=backend)
    assert torch.isfinite(out).all() and (out[~keep] == 0).all()
    assert_matches_reference(out, x, mask=keep)


def test_nan_at_a_kept_position_gives_a_nan_row(backend):
    """Like torch.softmax: a NaN never turns into a finite answer, even when all other columns are dropped."""
    device = backend_device(backend)
    x = _randn(4, 19, device=device)
    keep = _padding_mask(4, 19, device=device)
    keep[:, 3] = True
    keep[3] = False
    keep[3, 3] = True  # row 3: the NaN is the only kept column
    x[1, 3] = x[3, 3] = float("nan")
    out = ff.ops.softmax(x, mask=keep, backend=backend)
    assert out[[1, 3]].isnan().all()
    assert not out[[0, 2]].isnan().any()


def test_unmergeable_leading_dims(backend):
    device = backend_device(backend)
    x = _randn(2, 3, 2, 3, 5, device=device).permute(2, 0, 3, 1, 4)  # [2, 2, 3, 3, 5]: no view merges
    mask = _padding_mask(2, 1, 3, 1, 5, device=device)
    assert_matches_reference(ff.ops.softmax(x, mask=mask, causal=True, backend=backend), x, mask=mask, causal=True)
    assert_matches_reference(ff.ops.softmax(x, mask=mask, backend=backend), x, mask=mask)


@pytest.mark.parametrize("shape", [(), (0, 5), (3, 0), (2, 0, 4)], ids=str)
def test_degenerate_shapes(backend, shape):
    x = _randn(*shape, device=backend_device(backend))
    out = ff.ops.softmax(x, backend=backend)
    assert out.shape == x.shape
    torch.testing.assert_close(out, torch.softmax(x, -1))


def test_triton_looped_tiles(monkeypatch):
    """The online-softmax path for wide rows, with tiny tiles so a row spans many (incl. fully masked) tiles."""
    device = backend_device("triton")
    monkeypatch.setattr(triton_softmax, "MAX_SINGLE_TILE", 16)
    monkeypatch.setattr(triton_softmax, "TILE", 16)
    x = _randn(1, 3, 50, device=device)
    keep = _padding_mask(1, 3, 50, device=device)
    keep[:, :, :20] = False  # the first tile of every row is fully masked
    keep[0, 1] = False
    for causal in (False, True):
        out = ff.ops.softmax(x, scale=0.5, mask=keep, causal=causal, backend="triton")
        assert_matches_reference(out, x, scale=0.5, mask=keep, causal=causal)
    xd = _randn(1, 20, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: ff.ops.softmax(t, scale=0.7, backend="triton"), (xd,))


# ---- backward ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["additive_mask_grad", "bool_mask_causal", "dim1"])
def test_gradcheck(backend, case):
    device = backend_device(backend)
    if backend == "cuda":
        pytest.skip("the CUDA kernels have no fp64; test_backward_matches_reference covers their gradients")
    x = _randn(2, 3, 4, dtype=torch.float64, device=device, std=1.0).requires_grad_()
    if case == "additive_mask_grad":
        mask = _randn(3, 1, dtype=torch.float64, device=device, std=1.0).requires_grad_()
        inputs, fn = (x, mask), lambda a, m: ff.ops.softmax(a, scale=0.37, mask=m, backend=backend)
    elif case == "bool_mask_causal":
        keep = _padding_mask(3, 4, device=device)
        keep[1] = False
        inputs, fn = (x,), lambda a: ff.ops.softmax(a, scale=1.3, mask=keep, causal=True, backend=backend)
    else:
        inputs, fn = (x,), lambda a: ff.ops.softmax(a, dim=1, scale=0.37, backend=backend)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_backward_matches_reference(backend, dtype):
    """Gradients of x and of a broadcast additive float32 mask vs autograd of the fp64 reference."""
    device = backend_device(backend)
    x = _randn(2, 3, 4, 97, dtype=dtype, device=device)
    mask = torch.where(_padding_mask(2, 1, 1, 97, device=device), 0.5, float("-inf")).requires_grad_()
    grad_out = _randn(2, 3, 4, 97, dtype=dtype, device=device, std=1.0)

    def grads(fn, x_in, mask_in):
        x_in = x_in.detach().requires_grad_()
        mask_in = mask_in.detach().requires_grad_()
        out = fn(x_in, mask_in)
        out.backward(grad_out.to(out.dtype))
        return x_in.grad.double(), mask_in.grad.double()

    def run(a, m):
        return ff.ops.softmax(a, scale=0.3, mask=m, causal=True, backend=backend)

    def ref(a, m):
        return softmax_ref(a, scale=0.3, mask=m, causal=True)

    ours = grads(run, x, mask)
    expected = grads(ref, x.double(), mask.double())
    pytorch = grads(ref, x, mask)
    for name, o, e, p in zip(("grad x", "grad mask"), ours, expected, pytorch):
        # The mask's gradient sums 12 rows' worth of terms: scale the slack with its magnitude.
        magnitude = max(e.abs().max().item(), 1.0)
        assert_as_accurate(o / magnitude, p / magnitude, e / magnitude, dtype, name=name)


# ---- registration: opcheck, torch.compile --------------------------------------------------------

OPS = {
    "cpp": (torch.ops.fastformer.softmax_fwd.default, torch.ops.fastformer.softmax_bwd.default),
    "triton": (torch.ops.fastformer.softmax_fwd_triton.default, torch.ops.fastformer.softmax_bwd_triton.default),
}


def _ops_and_device(backend):
    device = backend_device(backend)
    if backend == "reference":
        pytest.skip("the reference backend is plain PyTorch, no custom op")
    return OPS["triton" if backend == "triton" else "cpp"], device


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_opcheck(backend, mask_kind):
    (fwd, bwd), device = _ops_and_device(backend)
    dtype = torch.float32 if backend == "cuda" else torch.float64  # the CUDA kernels have no fp64
    x = _randn(1, 2, 3, 17, dtype=dtype, device=device, std=1.0).requires_grad_()
    mask = {
        "none": None,
        "bool": _padding_mask(1, 2, 1, 17, device=device).expand(1, 2, 3, 17),
        "additive": _randn(1, 1, 1, 17, dtype=dtype, device=device, std=1.0).expand(1, 2, 3, 17).requires_grad_(),
    }[mask_kind]
    torch.library.opcheck(fwd, (x, mask, 0.5, True))
    y = fwd(x.detach(), mask.detach() if mask is not None else None, 0.5, False)
    torch.library.opcheck(bwd, (_randn(6, 17, dtype=dtype, device=device), y.reshape(6, 17), 0.5))


@pytest.mark.slow
def test_compile_fullgraph_cpu_forward_backward():
    torch._dynamo.reset()
    x = _randn(2, 3, 5, 17).requires_grad_()
    mask = _randn(2, 1, 1, 17, std=1.0).requires_grad_()

    def fn(a, m):
        return ff.ops.softmax(a, scale=0.5, mask=m, causal=True, backend="cpu")

    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(x, mask)
    (out * out).sum().backward()
    grads = (x.grad.clone(), mask.grad.clone())
    x.grad = mask.grad = None
    (fn(x, mask) ** 2).sum().backward()
    torch.testing.assert_close(out, fn(x, mask))
    torch.testing.assert_close(grads, (x.grad, mask.grad))


@pytest.mark.slow
def test_compile_fullgraph_triton_forward():
    device = backend_device("triton")
    torch._dynamo.reset()
    x = _randn(2, 3, 17, device=device)
    keep = _padding_mask(3, 17, device=device)
    compiled = torch.compile(lambda a: ff.ops.softmax(a, dim=-1, mask=keep, backend="triton"), fullgraph=True)
    assert_matches_reference(compiled(x), x, mask=keep)


# ---- bad input -----------------------------------------------------------------------------------

BAD_INPUTS = {
    "mask wrong shape": (dict(mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, "mask"),
    "mask too many dims": (dict(mask=torch.ones(2, 2, 3, 17, dtype=torch.bool)), ValueError, "mask"),
    "mask int": (dict(mask=torch.ones(17, dtype=torch.int32)), TypeError, "mask"),
    "mask float16 for float32 x": (dict(mask=torch.ones(17, dtype=torch.float16)), TypeError, "mask"),
    "mask not a tensor": (dict(mask=[1.0] * 17), TypeError, "mask"),
    "mask on another device": (dict(mask=torch.ones(17, device="meta")), ValueError, "mask"),
    "causal with dim != -1": (dict(dim=0, causal=True), ValueError, "causal"),
    "causal not a bool": (dict(causal=1), TypeError, "causal"),
    "dim out of range": (dict(dim=3), ValueError, "dim"),
    "dim not an int": (dict(dim=1.0), TypeError, "dim"),
    "scale not a number": (dict(scale=torch.tensor(1.0)), TypeError, "scale"),
    "scale not finite": (dict(scale=float("inf")), ValueError, "scale"),
    "unknown backend": (dict(backend="tpu"), ValueError, "backend"),
    "cuda backend on CPU tensors": (dict(backend="cuda"), ValueError, "backend"),
}


@pytest.mark.parametrize("kwargs, error, name", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_input(kwargs, error, name):
    with pytest.raises(error, match=name):
        ff.ops.softmax(_randn(2, 3, 17), **kwargs)


@pytest.mark.parametrize("x, error", [(torch.ones(3, dtype=torch.int64), TypeError), ([1.0, 2.0], TypeError)])
def test_bad_x(x, error):
    with pytest.raises(error, match="x must"):
        ff.ops.softmax(x)


def test_causal_needs_two_dims():
    with pytest.raises(ValueError, match="causal"):
        ff.ops.softmax(_randn(17), causal=True)


def test_ops_reject_malformed_tensors(backend):
    """The raw ops (bypassing the wrapper) fail with an error, never a crash or a wrong answer."""
    (fwd, bwd), device = _ops_and_device(backend)
    x = _randn(1, 2, 3, 17, device=device)
    with pytest.raises((RuntimeError, ValueError)):
        fwd(x.view(6, 17), None, 1.0, False)  # not 4-D
    with pytest.raises((RuntimeError, ValueError)):
        bwd(_randn(6, 17, device=device), _randn(6, 16, device=device), 1.0)  # grad_out and out disagree
