"""Property-based tests (hypothesis): each op against its `_ref` over random shapes, strides, dtypes,
masks and head dims, forward and backward; varlen_attention over random packed lengths too.

The fixed-case suites (test_attention.py, test_norm.py, test_softmax.py) pick the cases we thought of;
these draw the ones we did not. Deterministic: `derandomize=True` derives every example from the test
itself (the same examples on every run and machine, no example database); 250 examples per test keep
the file at ~10 s on one thread (measured at load average 6). Tensor values come from a
torch.Generator seeded by a drawn integer, so a failure shrinks to a small case that hypothesis prints.

Accuracy rule (DESIGN.md): an op's error against its `_ref` in fp64 is at most 2x the error of the
`_ref` run in the input dtype, plus a small atol relative to the output's magnitude.

Backends: the C++ kernels on CPU tensors; the CUDA and Triton kernels on a GPU. Interpreted Triton
(~1 ms per program instance) stays with the fixed small cases of the other suites.
"""
import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastformer as ff
from fastformer.ops import T5RelativeBias
from tests.conftest import backend_device
from tests.tolerance import max_err

pytestmark = pytest.mark.filterwarnings("ignore:ff.ops.attention. head dim:RuntimeWarning")

BACKENDS = ["cpu", pytest.param("triton", marks=pytest.mark.gpu), pytest.param("cuda", marks=pytest.mark.gpu)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Bounded so the file stays well inside CI's budget; derandomize makes the examples fixed.
PROPERTY_SETTINGS = settings(max_examples=250, deadline=None, derandomize=True, database=None,
                             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _device_for(backend: str, dtype: torch.dtype) -> torch.device:
    device = backend_device(backend)
    if device.type == "cuda" and dtype == torch.float64:
        pytest.skip("the GPU kernels have no float64")
    if device.type == "cpu" and backend == "triton":
        pytest.skip("interpreted Triton is too slow for a property sweep; test_attention/test_norm/test_softmax "
                    "cover it with fixed small cases")
    return device


def _assert_within_2x(what: str, got, ref64, baseline, dtype, rel_allowance=0.0, abs_allowance=0.0):
    assert got.shape == ref64.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert got.dtype == baseline.dtype, f"{what}: dtype {got.dtype} != {baseline.dtype}"
    assert not torch.isnan(got).any(), f"{what}: NaN"
    # Where PyTorch itself fails (fp16 LayerNorm's backward gives NaN for a constant row at eps 1e-12)
    # it bounds nothing: there the op must be within atol of the fp64 reference.
    baseline = torch.where(torch.isfinite(baseline), baseline, ref64.to(baseline.dtype))
    err, base = max_err(got, ref64), max_err(baseline, ref64)
    magnitude = max(1.0, _abs_max(ref64))
    # A gradient in a coarser dtype than the inputs (a float32 mask's, for float64 x) is summed over
    # its broadcast dims in that dtype: the coarser atol applies.
    tol = 2 * base + (max(ATOL[dtype], ATOL[got.dtype]) + rel_allowance) * magnitude + abs_allowance
    assert err <= tol, f"{what}: error {err:.3g} > 2 x the {dtype} reference's {base:.3g} + atol (tol {tol:.3g})"


def _abs_max(t) -> float:
    """max |t|, 0 for an empty tensor or a non-tensor."""
    return t.detach().abs().max().item() if isinstance(t, torch.Tensor) and t.numel() else 0.0


def _grads(out, leaves, grad_out):
    outs = out if isinstance(out, tuple) else (out,)
    grad_outs = grad_out if isinstance(grad_out, tuple) else (grad_out,)
    grads = torch.autograd.grad(outs, leaves, grad_outs, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves)]  # unused: zero gradient


def _as(x, dtype=None):
    """x as a new leaf in dtype (None: its own dtype), requires_grad kept; bool tensors, T5 tables and
    None handled."""
    if isinstance(x, T5RelativeBias):
        return dataclasses.replace(x, table=_as(x.table, dtype))
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.detach().to(dtype or x.dtype).requires_grad_(x.requires_grad)
    return x


# ---- strided tensors -------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "permuted", "row_padded", "strided_last", "offset"]


def _strided_randn(shape, dtype, device, layout: str, gen: torch.Generator) -> torch.Tensor:
    """A randn tensor of `shape` whose memory layout is `layout`:
    permuted: the leading dims in reverse memory order (a transposed view, last dim still contiguous);
    row_padded: rows of a wider buffer (row stride > N, as a slice of a fused projection);
    strided_last: every other element of the last dim (stride 2, the ops copy it);
    offset: a view one element into its storage (unaligned)."""
    shape = tuple(shape)
    numel = math.prod(shape)

    def randn(*s):
        return torch.randn(s, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    if layout == "permuted" and len(shape) >= 3:
        lead = list(range(len(shape) - 1))
        base = randn(*[shape[d] for d in reversed(lead)], shape[-1])
        return base.permute(*reversed(lead), len(shape) - 1)
    if layout == "row_padded" and len(shape) >= 1:
        return randn(*shape[:-1], shape[-1] + 3)[..., : shape[-1]]
    if layout == "strided_last" and len(shape) >= 1:
        return randn(*shape[:-1], 2 * shape[-1])[..., ::2]
    if layout == "offset":
        return randn(numel + 1)[1:].view(shape)
    return randn(*shape)


def _broadcast_shape(draw, shape):
    """A shape broadcastable to `shape`: some trailing dims of it, each kept or set to 1."""
    rank = draw(st.integers(0, len(shape)))
    tail = shape[len(shape) - rank:]
    return tuple(s if draw(st.booleans()) else 1 for s in tail)


# ---- attention --------------------------------------------------------------------------------------

@st.composite
def attention_cases(draw):
    heads_kv = draw(st.integers(1, 3))
    case = dict(
        batch=draw(st.integers(0, 3)), heads_kv=heads_kv, heads=heads_kv * draw(st.integers(1, 3)),
        seq_q=draw(st.integers(0, 24)), seq_k=draw(st.integers(0, 40)),
        # Every D >= 1: the common tiles, odd and prime sizes, and past the GPU limit of 256.
        head_dim=draw(st.one_of(st.integers(1, 160), st.sampled_from([64, 80, 96, 128, 256, 257, 320]))),
        dtype=draw(st.sampled_from(DTYPES)), layouts=[draw(st.sampled_from(LAYOUTS)) for _ in range(3)],
        bias=draw(st.sampled_from([None, "float", "float32", "bool", "t5_encoder", "t5_decoder"])),
        bias_grad=draw(st.booleans()), padding=draw(st.booleans()), causal=draw(st.booleans()),
        scale=draw(st.one_of(st.none(), st.floats(0.01, 2.0))), backward=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)))
    score_shape = (case["batch"], case["heads"], case["seq_q"], case["seq_k"])
    case["bias_shape"] = _broadcast_shape(draw, score_shape)
    return case


def _attention_inputs(case: dict, device) -> dict:
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, backward = case["dtype"], case["backward"]
    B, H, Hkv, Sq, Sk, D = (case[n] for n in ("batch", "heads", "heads_kv", "seq_q", "seq_k", "head_dim"))
    q, k, v = (_strided_randn(shape, dtype, device, layout, gen).requires_grad_(backward)
               for shape, layout in zip([(B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D)], case["layouts"]))
    inputs = dict(q=q, k=k, v=v, causal=case["causal"], scale=case["scale"])
    bias = case["bias"]
    if bias in ("float", "float32"):
        bias_dtype = dtype if bias == "float" else torch.float32
        inputs["attn_bias"] = torch.randn(case["bias_shape"], generator=gen).to(device, bias_dtype).requires_grad_(
            backward and case["bias_grad"])
    elif bias == "bool":
        inputs["attn_bias"] = (torch.rand(case["bias_shape"], generator=gen) < 0.7).to(device)
    elif bias is not None:
        # max_distance 20 < the longest distances drawn, so saturated buckets occur.
        table = torch.randn(32, H, generator=gen).to(device, dtype).requires_grad_(backward and case["bias_grad"])
        inputs["attn_bias"] = T5RelativeBias(table, 32, 20, bidirectional=bias == "t5_encoder")
    if case["padding"]:
        inputs["key_padding_mask"] = (torch.rand(B, Sk, generator=gen) < 0.7).to(device)
    return inputs


def _attention_leaves(inputs: dict) -> list:
    bias = inputs.get("attn_bias")
    bias = bias.table if isinstance(bias, T5RelativeBias) else bias
    return [t for t in (inputs["q"], inputs["k"], inputs["v"], bias) if isinstance(t, torch.Tensor) and t.requires_grad]


def _max_abs_lse(inputs64: dict) -> float:
    """A bound on |lse| over all rows: scale max|q_i| max|k_j| (Cauchy-Schwarz) + max|bias| + log(Sk)."""
    q, k = inputs64["q"].detach(), inputs64["k"].detach()
    scale = abs(inputs64["scale"]) if inputs64["scale"] is not None else 1 / math.sqrt(q.shape[-1])
    bias = inputs64.get("attn_bias")
    bias = bias.table if isinstance(bias, T5RelativeBias) else bias
    bias_max = _abs_max(bias) if isinstance(bias, torch.Tensor) and bias.is_floating_point() else 0.0
    seq_k = inputs64.get("max_seqlen_k", k.shape[-2])

    def longest(t):
        return t.norm(dim=-1).max().item() if t.numel() else 0.0

    return scale * longest(q) * longest(k) + bias_max + math.log(max(seq_k, 1))


def _score_allowance(inputs64: dict) -> float:
    """Scores s and lse are fp32 in every kernel (and the backward recomputes p = exp(s - lse)): a relative
    error of 2^-24 |s| in the exponent is a relative error of p, which a kernel that sums q.k in another
    order than PyTorch's matmul shows where scores are large (measured: 5e-5 vs PyTorch's 6e-6 at scale 2,
    D 320, |s| ~ 600)."""
    return 2.0**-24 * _max_abs_lse(inputs64)


def _delta_error_bound(inputs64: dict, out, out64, grad_out, dtype) -> dict:
    """Absolute error bounds that FlashAttention's backward adds to each gradient (the kernels' formula,
    not a bug). It takes delta_i = sum_d dO_id O_id from the stored output O (rounded to the input
    dtype) instead of PyTorch's sum_j P_ij dP_ij, so dS_ij = P_ij (dP_ij - delta_i) inherits delta's
    error, sum_d |dO_id| |O_id - O64_id| plus D ulps of the accumulation, which cancels badly when one
    key takes nearly all the probability (measured: dq off by 1.5e-5 where fp32 PyTorch is off by
    5e-7, at scale 1, D 64, Sk 2; by 7e-3 vs 7e-4 in fp16 at scale 2). With sum_j P_ij <= 1:
    dq = scale dS k gains <= scale max|k| max_i err_i, dk = scale dS^T q <= scale max|q| sum_i err_i,
    a bias (dense, broadcast, or a T5 table summing over positions) <= sum err; dv = P^T dO does not
    use delta. Any layout with D last (attention's [B, H, S, D], varlen's [T, H, D])."""
    q, k = inputs64["q"].detach(), inputs64["k"].detach()
    head_dim = q.shape[-1]
    scale = abs(inputs64["scale"]) if inputs64["scale"] is not None else 1 / math.sqrt(head_dim)
    ulp = 2.0**-53 if dtype == torch.float64 else 2.0**-24
    d_out, out64 = grad_out.double().abs(), out64.detach()
    err = (d_out * (out.detach().double() - out64).abs()).sum(-1) + head_dim * ulp * (d_out * out64.abs()).sum(-1)
    worst, total = (err.max().item(), err.sum().item()) if err.numel() else (0.0, 0.0)
    return {"dq": scale * _abs_max(k) * worst, "dk": scale * _abs_max(q) * total, "dv": 0.0, "dbias": total}


def _check_attention_grads(out, ref64, baseline, inputs, inputs64, baseline_inputs, dtype, seed):
    """The gradients of q, k, v and a bias (dense or T5 table) against the fp64 reference's."""
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device, dtype)
    got = _grads(out, _attention_leaves(inputs), grad_out)
    want = _grads(ref64, _attention_leaves(inputs64), grad_out.double())
    base = _grads(baseline, _attention_leaves(baseline_inputs), grad_out)
    delta = _delta_error_bound(inputs64, out, ref64, grad_out, dtype)
    for name, g, w, b in zip(["dq", "dk", "dv", "dbias"], got, want, base):
        _assert_within_2x(name, g, w, b, dtype, _score_allowance(inputs64), delta[name])


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=attention_cases())
def test_attention_matches_ref(backend, case):
    device = _device_for(backend, case["dtype"])
    dtype = case["dtype"]
    inputs = _attention_inputs(case, device)
    out = ff.ops.attention(**inputs, backend=backend)
    inputs64 = {name: _as(x, torch.float64) for name, x in inputs.items()}
    ref64 = ff.ops.attention_ref(**inputs64)
    baseline_inputs = {name: _as(x) for name, x in inputs.items()}
    baseline = ff.ops.attention_ref(**baseline_inputs)
    _assert_within_2x("out", out, ref64, baseline, dtype, _score_allowance(inputs64))
    if case["backward"]:
        _check_attention_grads(out, ref64, baseline, inputs, inputs64, baseline_inputs, dtype, case["seed"] + 1)


# ---- varlen_attention --------------------------------------------------------------------------------

@st.composite
def varlen_cases(draw):
    heads_kv = draw(st.integers(1, 3))
    batch = draw(st.integers(0, 4))
    lengths_q = [draw(st.integers(0, 12)) for _ in range(batch)]
    lengths_k = [draw(st.integers(0, 16)) for _ in range(batch)]
    return dict(
        heads_kv=heads_kv, heads=heads_kv * draw(st.integers(1, 3)), lengths_q=lengths_q, lengths_k=lengths_k,
        # max_seqlen may exceed every length (a bucket size); it never falls below one.
        slack_q=draw(st.integers(0, 3)), slack_k=draw(st.integers(0, 3)),
        head_dim=draw(st.one_of(st.integers(1, 160), st.sampled_from([64, 128, 256, 320]))),
        dtype=draw(st.sampled_from(DTYPES)), layouts=[draw(st.sampled_from(LAYOUTS)) for _ in range(3)],
        bias=draw(st.sampled_from([None, "t5_encoder", "t5_decoder"])), bias_grad=draw(st.booleans()),
        causal=draw(st.booleans()), scale=draw(st.one_of(st.none(), st.floats(0.01, 2.0))),
        backward=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


def _cu_seqlens(lengths, device) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32,
                        device=device)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=varlen_cases())
def test_varlen_attention_matches_ref(backend, case):
    device = _device_for(backend, case["dtype"])
    dtype, backward, heads, heads_kv = case["dtype"], case["backward"], case["heads"], case["heads_kv"]
    gen = torch.Generator().manual_seed(case["seed"])
    total_q, total_k, head_dim = sum(case["lengths_q"]), sum(case["lengths_k"]), case["head_dim"]
    q, k, v = (_strided_randn(shape, dtype, device, layout, gen).requires_grad_(backward)
               for shape, layout in zip([(total_q, heads, head_dim), (total_k, heads_kv, head_dim),
                                         (total_k, heads_kv, head_dim)], case["layouts"]))
    inputs = dict(q=q, k=k, v=v, cu_seqlens_q=_cu_seqlens(case["lengths_q"], device),
                  cu_seqlens_k=_cu_seqlens(case["lengths_k"], device),
                  max_seqlen_q=max(case["lengths_q"], default=0) + case["slack_q"],
                  max_seqlen_k=max(case["lengths_k"], default=0) + case["slack_k"],
                  causal=case["causal"], scale=case["scale"])
    if case["bias"] is not None:
        table = torch.randn(32, heads, generator=gen).to(device, dtype).requires_grad_(backward and case["bias_grad"])
        inputs["attn_bias"] = T5RelativeBias(table, 32, 20, bidirectional=case["bias"] == "t5_encoder")
    out = ff.ops.varlen_attention(**inputs, backend=backend)
    inputs64 = {name: _as(x, torch.float64) for name, x in inputs.items()}
    baseline_inputs = {name: _as(x) for name, x in inputs.items()}
    ref64, baseline = ff.ops.varlen_attention_ref(**inputs64), ff.ops.varlen_attention_ref(**baseline_inputs)
    _assert_within_2x("out", out, ref64, baseline, dtype, _score_allowance(inputs64))
    if backward:
        _check_attention_grads(out, ref64, baseline, inputs, inputs64, baseline_inputs, dtype, case["seed"] + 1)


# ---- layer_norm and rms_norm --------------------------------------------------------------------------

@st.composite
def norm_cases(draw):
    rank = draw(st.integers(1, 4))
    lead = [draw(st.integers(0, 5)) for _ in range(rank - 1)]
    width = draw(st.one_of(st.integers(1, 300), st.sampled_from([384, 768, 1025, 4099])))
    return dict(shape=(*lead, width), dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(LAYOUTS)), residual_layout=draw(st.sampled_from([None, *LAYOUTS])),
                weight=draw(st.booleans()), bias=draw(st.booleans()),
                eps=draw(st.sampled_from([1e-12, 1e-6, 1e-5, 0.1])), backward=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _layer_norm_fp64(x, weight=None, bias=None, eps=1e-5, residual=None):
    """layer_norm_ref's semantics decomposed into autograd ops, for the fp64 truth: F.layer_norm's
    fused backward is off by ~1e-10 in fp64 (and 0.02 in fp32) on a constant row at eps 1e-12, where
    rstd = 1e6 magnifies its rounding; here s - mean is exactly 0 there and so are the gradients."""
    s = x + residual if residual is not None else x
    centered = s - s.mean(-1, keepdim=True)
    out = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps)
    out = out * weight if weight is not None else out
    out = out + bias if bias is not None else out
    return (out, s) if residual is not None else out


# op name -> (op, its _ref (the same-dtype baseline), the fp64 truth)
NORMS = {"layer_norm": (ff.ops.layer_norm, ff.ops.layer_norm_ref, _layer_norm_fp64),
         "rms_norm": (ff.ops.rms_norm, ff.ops.rms_norm_ref, ff.ops.rms_norm_ref)}


@pytest.mark.parametrize("op_name", NORMS)
@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=norm_cases())
def test_norm_matches_ref(op_name, backend, case):
    device = _device_for(backend, case["dtype"])
    op, ref, truth = NORMS[op_name]
    dtype, shape, backward = case["dtype"], case["shape"], case["backward"]
    gen = torch.Generator().manual_seed(case["seed"])
    x = _strided_randn(shape, dtype, device, case["layout"], gen).requires_grad_(backward)
    residual = None
    if case["residual_layout"] is not None:
        residual = _strided_randn(shape, dtype, device, case["residual_layout"], gen).requires_grad_(backward)
    weight = (1 + 0.5 * torch.randn(shape[-1], generator=gen)).to(device, dtype).requires_grad_(backward)
    weight = weight if case["weight"] else None
    bias = torch.randn(shape[-1], generator=gen).to(device, dtype).requires_grad_(backward)
    bias = bias if case["bias"] and op_name == "layer_norm" else None
    args = dict(x=x, weight=weight, residual=residual, eps=case["eps"])
    if bias is not None:
        args["bias"] = bias
    out = op(**args, backend=backend)
    args64 = {name: _as(t, torch.float64) for name, t in args.items()}
    baseline_args = {name: _as(t) for name, t in args.items()}
    ref64, baseline = truth(**args64), ref(**baseline_args)
    names = ["out", "x + residual"]
    for name, got, want, base in zip(names, *(o if residual is not None else (o,) for o in (out, ref64, baseline))):
        _assert_within_2x(name, got, want, base, dtype)
    if not backward:
        return
    leaves = [t for t in args.values() if isinstance(t, torch.Tensor)]
    outputs = 2 if residual is not None else 1
    grad_out = tuple(torch.randn(shape, generator=gen).to(device, dtype) for _ in range(outputs))
    got = _grads(out, leaves, grad_out)
    want = _grads(ref64, [t for t in args64.values() if isinstance(t, torch.Tensor)],
                  tuple(g.double() for g in grad_out))
    base = _grads(baseline, [t for t in baseline_args.values() if isinstance(t, torch.Tensor)], grad_out)
    for name, g, w, b in zip([n for n, t in args.items() if isinstance(t, torch.Tensor)], got, want, base):
        _assert_within_2x(f"d{name}", g, w, b, dtype)


# ---- softmax ---------------------------------------------------------------------------------------

@st.composite
def softmax_cases(draw):
    rank = draw(st.integers(0, 5))
    shape = tuple(draw(st.integers(0, 6)) for _ in range(rank - 1)) + (
        (draw(st.one_of(st.integers(1, 300), st.sampled_from([1024, 1025, 4099]))),) if rank else ())
    causal = rank >= 2 and draw(st.booleans())
    dim = -1 if causal or rank == 0 else draw(st.integers(-rank, rank - 1))
    return dict(shape=shape, dim=dim, causal=causal, dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(LAYOUTS)), scale=draw(st.floats(-4.0, 4.0)),
                mask=draw(st.sampled_from([None, "bool", "additive", "float32", "additive_inf"])),
                mask_shape=_broadcast_shape(draw, shape), mask_grad=draw(st.booleans()),
                backward=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


def _softmax_mask(case: dict, device, gen):
    kind, shape, dtype = case["mask"], case["mask_shape"], case["dtype"]
    if kind is None:
        return None
    if kind == "bool":
        return (torch.rand(shape, generator=gen) < 0.7).to(device)
    mask = torch.randn(shape, generator=gen)
    if kind == "additive_inf":  # -inf excludes, like an additive attention mask
        mask = mask.masked_fill(torch.rand(shape, generator=gen) < 0.3, float("-inf"))
    requires_grad = case["backward"] and case["mask_grad"] and kind != "additive_inf"
    return mask.to(device, torch.float32 if kind == "float32" else dtype).requires_grad_(requires_grad)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY_SETTINGS
@given(case=softmax_cases())
def test_softmax_matches_ref(backend, case):
    device = _device_for(backend, case["dtype"])
    dtype, shape = case["dtype"], case["shape"]
    gen = torch.Generator().manual_seed(case["seed"])
    x = _strided_randn(shape, dtype, device, case["layout"], gen).requires_grad_(case["backward"])
    mask = _softmax_mask(case, device, gen)
    kwargs = dict(dim=case["dim"], scale=case["scale"], causal=case["causal"])
    out = ff.ops.softmax(x, mask=mask, backend=backend, **kwargs)
    x64, mask64 = _as(x, torch.float64), _as(mask, torch.float64)
    ref64 = ff.ops.softmax_ref(x64, mask=mask64, **kwargs)
    x_low, mask_low = _as(x), _as(mask)
    baseline = ff.ops.softmax_ref(x_low, mask=mask_low, **kwargs)
    _assert_within_2x("out", out, ref64, baseline, dtype)
    if not case["backward"]:
        return
    grad_out = torch.randn(shape, generator=gen).to(device, dtype)
    # The op saves its output in x's dtype for the backward, so a float32 mask's gradient sums dz rounded
    # at that precision: the same-dtype baseline for the gradients is PyTorch with the mask in x's dtype
    # too (the float32 one keeps a float32 softmax and is more accurate than any fp16 output can be).
    x_low, mask_low = _as(x), _as(mask, dtype)
    baseline = ff.ops.softmax_ref(x_low, mask=mask_low, **kwargs)
    leaves = [t for t in (x, mask) if t is not None and t.requires_grad]
    leaves64 = [t for t in (x64, mask64) if t is not None and t.requires_grad]
    leaves_low = [t for t in (x_low, mask_low) if t is not None and t.requires_grad]
    got, want, base = (_grads(o, ls, grad_out.to(o.dtype))
                       for o, ls in ((out, leaves), (ref64, leaves64), (baseline, leaves_low)))
    for name, g, w, b in zip(["dx", "dmask"], got, want, base):
        # A mask coarser than x (float32 for float64 x) gets its gradient summed over its broadcast dims in
        # its own dtype, in an order that depends on the thread count: allow one rounding of that dtype per
        # term, eps * sum |dz| over the full shape (e.g. 1.2e-5 for a scalar mask over 61k elements, 2 threads).
        summed = 0.0
        if name == "dmask" and g.dtype != dtype:
            z_grad = torch.zeros(shape, dtype=torch.float64, device=device, requires_grad=True)  # dz, full shape
            y64 = ff.ops.softmax_ref(x64.detach(), mask=mask64.detach() + z_grad, **kwargs)
            summed = torch.finfo(g.dtype).eps * torch.autograd.grad(y64, z_grad, grad_out.double())[0].abs().sum().item()
        _assert_within_2x(name, g, w, b.to(g.dtype), dtype, abs_allowance=summed)
