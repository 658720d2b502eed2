"""ff.ops.attention on every backend against an fp64 reference, F.scaled_dot_product_attention and
autograd; plus dropout, T5 bias, strided views, opcheck, torch.compile and bad inputs.

Accuracy rule: a backend's error against attention_ref in fp64 must be at most 2x the error of the
same-dtype PyTorch implementation (SDPA where it can express the case, else attention_ref run in the
low dtype) plus a small atol. Interpreted Triton shapes stay small (~1 ms per program instance).
"""
import dataclasses
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from fastformer.ops import _attention
from tests.compiled import assert_compiled_matches_eager
from tests.tolerance import max_err
from fastformer.ops.attention import (GPU_MAX_HEAD_DIM, T5RelativeBias, attention, attention_ref,
                                      draw_dropout_seed, dropout_keep_mask)

BACKENDS = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu), "reference"]
LOW_DTYPES = [torch.float16, torch.bfloat16, torch.float32]
ATOL = {torch.float16: 1e-4, torch.bfloat16: 1e-3, torch.float32: 1e-6, torch.float64: 1e-10}
GPU = torch.device("cuda") if torch.cuda.is_available() else None


def _interpreted_triton(backend: str, device: torch.device) -> bool:
    return backend == "triton" and device.type == "cpu"


# ---- cases ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    batch: int = 2
    heads: int = 2
    heads_kv: int = 2
    seq_q: int = 17
    seq_k: int = 33
    head_dim: int = 32
    causal: bool = False
    padding: str | None = None  # "random" or "empty_batch" (batch 0 attends to nothing)
    bias: tuple | None = None  # dense bias shape (broadcastable to [B, H, Sq, Sk]); "alibi" slopes * j
    alibi: bool = False
    bool_mask: bool = False  # a bool attn_bias [Sq, Sk] (True = attend) whose row 1 attends to nothing
    t5: str | None = None  # "encoder" (bidirectional) or "decoder" (unidirectional)
    bias_grad: bool = False

    def inputs(self, dtype, device, requires_grad=False, seed=0) -> dict:
        """Fresh random inputs (the same for the same seed); T5 tables use max_distance 20 so that
        distances past it (saturated buckets) occur."""
        gen = torch.Generator().manual_seed(seed)

        def randn(*shape, grad=requires_grad):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(grad)

        q = randn(self.batch, self.heads, self.seq_q, self.head_dim)
        k = randn(self.batch, self.heads_kv, self.seq_k, self.head_dim)
        v = randn(self.batch, self.heads_kv, self.seq_k, self.head_dim)
        out = dict(q=q, k=k, v=v, causal=self.causal)
        if self.padding:
            mask = torch.rand(self.batch, self.seq_k, generator=gen) < 0.75
            mask[:, -1] = True
            if self.padding == "empty_batch":
                mask[0] = False
            out["key_padding_mask"] = mask.to(device)
        if self.alibi:
            slopes = 2.0 ** -torch.arange(1, self.heads + 1).float()
            bias = (slopes[:, None, None] * torch.arange(self.seq_k).float()).unsqueeze(0)  # [1, H, 1, Sk]
            out["attn_bias"] = bias.to(device=device, dtype=dtype).requires_grad_(self.bias_grad and requires_grad)
        elif self.bias:
            out["attn_bias"] = randn(*self.bias, grad=self.bias_grad and requires_grad)
        elif self.bool_mask:
            mask = torch.rand(self.seq_q, self.seq_k, generator=gen) < 0.7
            mask[1] = False
            out["attn_bias"] = mask.to(device)
        if self.t5:
            table = randn(32, self.heads)
            out["attn_bias"] = T5RelativeBias(table, 32, 20, bidirectional=self.t5 == "encoder")
        return out

    @property
    def has_empty_rows(self) -> bool:
        return self.padding == "empty_batch" or self.bool_mask or (self.causal and self.seq_q > self.seq_k)


def _to(inputs: dict, dtype) -> dict:
    """The same inputs in another dtype, as new leaves (gradients of the copies compare with the originals)."""
    def convert(x):
        if isinstance(x, T5RelativeBias):
            return dataclasses.replace(x, table=convert(x.table))
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            return x.detach().to(dtype).requires_grad_(x.requires_grad)
        return x
    return {name: convert(x) for name, x in inputs.items()}


def _leaves(inputs: dict) -> list:
    """Tensors that require grad, in a fixed order: q, k, v, dense bias or T5 table."""
    bias = inputs.get("attn_bias")
    bias = bias.table if isinstance(bias, T5RelativeBias) else bias
    return [t for t in (inputs["q"], inputs["k"], inputs["v"], bias) if isinstance(t, torch.Tensor) and t.requires_grad]


def _sdpa(inputs: dict):
    """F.scaled_dot_product_attention on the same case (bias, masks materialized), in the inputs' dtype."""
    q, k = inputs["q"], inputs["k"]
    seq_q, seq_k = q.shape[2], k.shape[2]
    bias = inputs.get("attn_bias")
    if isinstance(bias, T5RelativeBias):
        bias = bias.materialize(seq_q, seq_k)
    keep = torch.ones((1, 1, seq_q, seq_k), dtype=torch.bool, device=q.device)
    if bias is not None and bias.dtype == torch.bool:
        keep, bias = keep & bias, None
    mask = torch.zeros((1, 1, seq_q, seq_k), dtype=q.dtype, device=q.device) if bias is None else bias.to(q.dtype)
    if inputs.get("key_padding_mask") is not None:
        keep = keep & inputs["key_padding_mask"][:, None, None, :]
    if inputs["causal"]:
        keep = keep & torch.ones(seq_q, seq_k, dtype=torch.bool, device=q.device).tril(seq_k - seq_q)
    mask = mask.masked_fill(~keep, float("-inf"))
    return F.scaled_dot_product_attention(q, k, inputs["v"], attn_mask=mask, enable_gqa=True)


def _assert_within_2x(what: str, got, ref64, baseline, dtype, interpreted_triton=False, rel_allowance=0.0):
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    err, base = max_err(got, ref64), max_err(baseline, ref64)
    scale = max(1.0, ref64.abs().max().item())
    tol = 2 * base + (ATOL[dtype] + rel_allowance) * scale
    if interpreted_triton and dtype == torch.bfloat16:
        tol += 2.0**-8 * scale  # the interpreter truncates fp32 -> bf16 (1 ulp) instead of rounding
    assert err <= tol, f"{what}: error {err:.3g} > 2 x PyTorch error {base:.3g} + atol (tol {tol:.3g})"


FORWARD_CASES = [
    Case("plain", heads=3, heads_kv=3, seq_k=97, head_dim=64),
    Case("causal_square", batch=1, seq_q=97, seq_k=97, causal=True),
    Case("causal_bottom_right", seq_q=17, seq_k=40, head_dim=64, causal=True),
    Case("causal_more_queries_than_keys", seq_q=40, seq_k=17, causal=True),
    Case("gqa_head_dim_96", batch=1, heads=6, heads_kv=2, head_dim=96),
    Case("mqa_causal", heads=4, heads_kv=1, causal=True),
    Case("padding_with_empty_batch", seq_q=9, padding="empty_batch"),
    Case("bias_full", bias=(2, 2, 17, 33)),
    Case("bias_alibi", alibi=True),
    Case("bias_padding_causal", bias=(2, 1, 17, 33), padding="random", causal=True),
    Case("bool_mask_with_empty_row", bool_mask=True),
    Case("head_dim_80", batch=1, head_dim=80),
    Case("head_dim_256", batch=1, heads=1, heads_kv=1, head_dim=256),
    Case("decode_split_k", heads=4, heads_kv=1, seq_q=1, seq_k=1025, head_dim=64, padding="empty_batch"),
    Case("decode_t5_decoder", seq_q=1, seq_k=97, causal=True, t5="decoder"),
    Case("long_queries", batch=1, heads=1, heads_kv=1, seq_q=1025, seq_k=17),
    Case("t5_encoder", t5="encoder"),
    Case("t5_decoder_causal", seq_q=33, causal=True, t5="decoder"),
    Case("length_one", batch=1, seq_q=1, seq_k=1),
]


def _sdpa_expresses(case: Case) -> bool:
    return not case.has_empty_rows  # SDPA gives NaN for rows with no key


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.name)
def test_reference_matches_sdpa_in_fp64(case):
    """The reference's semantics (masks, causal alignment, GQA, biases) agree with SDPA's."""
    inputs = case.inputs(torch.float64, "cpu")
    ref = attention_ref(**inputs)
    if _sdpa_expresses(case):
        torch.testing.assert_close(ref, _sdpa(inputs), rtol=1e-10, atol=1e-10)
    else:
        assert torch.isfinite(ref).all()


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_fp64_reference(backend, attention_device, dtype, case):
    device = attention_device
    inputs = case.inputs(dtype, device)
    out = attention(**inputs, backend=backend)
    assert out.shape == inputs["q"].shape and out.dtype == dtype and out.is_contiguous()
    ref64 = attention_ref(**_to(inputs, torch.float64))
    # The reference backend is the low-dtype PyTorch implementation itself (its semantics are checked
    # against SDPA in fp64 above); the kernels must be as accurate as SDPA where SDPA applies.
    use_sdpa = _sdpa_expresses(case) and backend != "reference"
    baseline = _sdpa(inputs) if use_sdpa else attention_ref(**inputs)
    _assert_within_2x("out", out, ref64, baseline, dtype, _interpreted_triton(backend, device))
    if case.padding == "empty_batch":
        assert (out[0] == 0).all(), "rows with every key masked must be zeros"
    if case.bool_mask:
        assert (out[:, :, 1] == 0).all(), "rows with every key masked must be zeros"
    if case.causal and case.seq_q > case.seq_k:
        assert (out[:, :, : case.seq_q - case.seq_k] == 0).all(), "rows that see no key must be zeros"


BACKWARD_CASES = [
    Case("plain", seq_k=40, head_dim=64),
    Case("causal_more_queries_than_keys", seq_q=40, seq_k=17, causal=True),
    Case("gqa_causal", heads=4, heads_kv=2, causal=True),
    Case("padding_with_empty_batch", seq_q=9, padding="empty_batch"),
    Case("bias_grad_full", bias=(2, 2, 17, 33), bias_grad=True, causal=True),
    Case("bias_grad_alibi", alibi=True, bias_grad=True, padding="random"),
    Case("t5_encoder_table_grad", t5="encoder"),
    Case("t5_decoder_table_grad_gqa", heads=4, heads_kv=2, seq_q=33, causal=True, t5="decoder"),
    Case("head_dim_80", batch=1, head_dim=80),
]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_fp64_reference(backend, attention_device, dtype, case):
    device = attention_device
    inputs = case.inputs(dtype, device, requires_grad=True)
    grad_out = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    grads = torch.autograd.grad(attention(**inputs, backend=backend), _leaves(inputs), grad_out)
    inputs64 = _to(inputs, torch.float64)
    grads64 = torch.autograd.grad(attention_ref(**inputs64), _leaves(inputs64), grad_out.double())
    lowp = _to(inputs, dtype)
    baselines = torch.autograd.grad(attention_ref(**lowp), _leaves(lowp), grad_out)
    # The contract stores lse in fp32, so every backward recomputes p = exp(s - lse) with a relative
    # error up to 2^-24 |lse| (1.5e-6 at |lse| = 25), above fp32 PyTorch's own error for large scores.
    lse_allowance = 2.0**-24 * _max_abs_lse(inputs64)
    names = ["dq", "dk", "dv", "dbias" if case.bias_grad else "dtable"]
    for name, got, ref64, baseline in zip(names, grads, grads64, baselines):
        assert got.shape == ref64.shape and got.dtype == dtype, name
        _assert_within_2x(name, got, ref64, baseline, dtype, _interpreted_triton(backend, device), lse_allowance)


def _max_abs_lse(inputs: dict) -> float:
    """A bound on |lse| over all rows: max |scale * q.k + bias| + log(Sk)."""
    q, k = inputs["q"].detach(), inputs["k"].detach()
    seq_q, seq_k = q.shape[2], k.shape[2]
    scores = q @ k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).transpose(-1, -2) / math.sqrt(q.shape[-1])
    bias = inputs.get("attn_bias")
    if isinstance(bias, T5RelativeBias):
        bias = bias.materialize(seq_q, seq_k)
    bias = 0.0 if bias is None else bias.detach().abs()
    return (scores.abs() + bias).max().item() + math.log(seq_k)


GRADCHECK_CASES = [
    Case("bias_padding_causal_gqa", batch=1, heads=2, heads_kv=1, seq_q=5, seq_k=7, bias=(1, 2, 5, 7),
         bias_grad=True, padding="random", causal=True),
    Case("t5_encoder", batch=1, seq_q=5, seq_k=7, t5="encoder"),
]


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_gradcheck_fp64(backend, attention_device, case, dropout_p):
    device = attention_device
    if device.type != "cpu":
        pytest.skip("fp64 attention runs on CPU tensors (Triton only when interpreted)")
    inputs = case.inputs(torch.float64, device, requires_grad=True)
    leaves = _leaves(inputs)

    def fn(*tensors):
        args = dict(inputs, q=tensors[0], k=tensors[1], v=tensors[2])
        if len(tensors) > 3:
            bias = args["attn_bias"]
            args["attn_bias"] = dataclasses.replace(bias, table=tensors[3]) if isinstance(bias, T5RelativeBias) \
                else tensors[3]
        torch.manual_seed(0)  # the same dropout mask on every evaluation
        return attention(**args, dropout_p=dropout_p, backend=backend)

    assert torch.autograd.gradcheck(fn, leaves, fast_mode=True, atol=1e-5, rtol=1e-3)


# ---- layouts ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views_of_fused_qkv_need_no_copy(backend, attention_device):
    device = attention_device
    batch, seq, heads, head_dim = 2, 17, 2, 32
    qkv = torch.randn(batch, seq, 3, heads, head_dim, device=device, requires_grad=True)  # one fused projection
    q, k, v = (qkv[:, :, n].transpose(1, 2) for n in range(3))  # [B, H, S, D] strided views
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = attention(q, k, v, causal=True, backend=backend)
    (grad_qkv,) = torch.autograd.grad(out.square().sum(), qkv)
    ref_qkv = qkv.detach().double().requires_grad_()
    rq, rk, rv = (ref_qkv[:, :, n].transpose(1, 2) for n in range(3))
    ref = attention_ref(rq, rk, rv, causal=True)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), ref_qkv)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad_qkv.double(), ref_grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_last_dim_is_copied(backend, attention_device):
    device = attention_device
    q = torch.randn(1, 2, 32, 9, device=device).transpose(-1, -2)  # [B, H, S=9, D=32], last dim strided
    k = torch.randn(1, 2, 11, 32, device=device)
    v = torch.randn(1, 2, 11, 32, device=device)
    torch.testing.assert_close(attention(q, k, v, backend=backend), attention_ref(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton"])
def test_decode_splits_keys_over_programs(backend, attention_device, monkeypatch):
    """One query per head against 1025 keys leaves the GPU idle without split-K: check the Triton
    launcher takes that path (the forward cases check its numbers, incl. a fully padded row)."""
    from fastformer.kernels import attention as kernels

    decisions = []
    real = kernels._num_splits
    monkeypatch.setattr(kernels, "_num_splits", lambda *args: decisions.append(real(*args)) or decisions[-1])
    inputs = next(c for c in FORWARD_CASES if c.name == "decode_split_k").inputs(torch.float32, attention_device)
    out = attention(**inputs, backend=backend)
    torch.testing.assert_close(out, attention_ref(**inputs), rtol=1e-5, atol=1e-5)
    assert decisions and decisions[-1][0] > 1, f"no split-K: {decisions}"


def test_cuda_training_without_cuda_backward_uses_the_triton_backward(monkeypatch):
    monkeypatch.setattr(_attention, "cpp_kernel_registered", lambda op, device_type: op != "attention_bwd")
    assert _attention._backward_op("cpp", torch.device("cuda")) is _attention.BWD_OPS["triton"]
    assert _attention._backward_op("cpp", torch.device("cpu")) is _attention.BWD_OPS["cpp"]
    monkeypatch.setattr(_attention, "cpp_kernel_registered", lambda op, device_type: True)
    assert _attention._backward_op("cpp", torch.device("cuda")) is _attention.BWD_OPS["cpp"]


def test_auto_backend_runs_on_cpu_tensors(monkeypatch):
    monkeypatch.delenv("FASTFORMER_BACKEND", raising=False)
    inputs = Case("auto").inputs(torch.float32, "cpu")
    torch.testing.assert_close(attention(**inputs), attention_ref(**inputs), rtol=1e-5, atol=1e-5)


# ---- head dims -----------------------------------------------------------------------------------------

# Every D >= 1 runs (fastformer/ops/_head_dim.py): odd sizes, sizes below Triton's 16-wide block, sizes
# between the CUDA tiles, and 320 above GPU_MAX_HEAD_DIM (the GPU backends fall back to the reference).
AWKWARD_HEAD_DIMS = [1, 8, 16, 24, 48, 72, 160, 200, 320]
HEAD_DIM_CASES = [
    Case("prefill_gqa_causal", batch=1, heads=4, heads_kv=2, seq_q=9, seq_k=13, causal=True, padding="random"),
    Case("decode", batch=2, heads=2, heads_kv=1, seq_q=1, seq_k=13, causal=True),
    Case("t5_decoder", batch=1, seq_q=5, seq_k=9, causal=True, t5="decoder"),
]


@pytest.mark.filterwarnings("ignore:ff.ops.attention. head dim D=320")
@pytest.mark.parametrize("case", HEAD_DIM_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("head_dim", AWKWARD_HEAD_DIMS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_any_head_dim_matches_fp64_reference(backend, attention_device, head_dim, case):
    """Forward and backward (q, k, v and the T5 table) in fp32 and fp16 against the fp64 reference."""
    case = dataclasses.replace(case, head_dim=head_dim)
    for dtype in (torch.float32, torch.float16):
        inputs = case.inputs(dtype, attention_device, requires_grad=True)
        grad_out = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(1)).to(attention_device)
        out = attention(**inputs, backend=backend)
        grads = torch.autograd.grad(out, _leaves(inputs), grad_out.to(dtype))
        inputs64 = _to(inputs, torch.float64)
        ref64 = attention_ref(**inputs64)
        grads64 = torch.autograd.grad(ref64, _leaves(inputs64), grad_out.to(dtype).double())
        lowp = _to(inputs, dtype)
        baseline = attention_ref(**lowp)
        baseline_grads = torch.autograd.grad(baseline, _leaves(lowp), grad_out.to(dtype))
        assert out.shape == inputs["q"].shape and out.dtype == dtype and out.is_contiguous()
        interpreted = _interpreted_triton(backend, attention_device)
        _assert_within_2x("out", out, ref64, baseline, dtype, interpreted)
        lse_allowance = 2.0**-24 * _max_abs_lse(inputs64)
        for name, got, want, base in zip(["dq", "dk", "dv", "dtable"], grads, grads64, baseline_grads):
            _assert_within_2x(f"{name} (D={head_dim}, {dtype})", got, want, base, dtype, interpreted, lse_allowance)


@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_gpu_backends_above_max_head_dim_fall_back_with_one_warning(backend, attention_device):
    from fastformer.ops import _head_dim

    _head_dim._warn_gpu_fallback.cache_clear()
    inputs = Case("wide", batch=1, seq_q=3, seq_k=5, head_dim=GPU_MAX_HEAD_DIM + 8).inputs(torch.float32,
                                                                                      attention_device)
    with pytest.warns(RuntimeWarning, match=f"D={GPU_MAX_HEAD_DIM + 8} exceeds .* GPU_MAX_HEAD_DIM=256"):
        out = attention(**inputs, backend=backend)
    torch.testing.assert_close(out, attention_ref(**inputs), rtol=1e-5, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention(**inputs, backend=backend)  # once per head dim


def test_cuda_tiles_hold_every_gpu_head_dim():
    from fastformer.ops import _head_dim

    tiles = [_head_dim.cuda_tile(d) for d in range(1, GPU_MAX_HEAD_DIM + 1)]
    assert all(t >= d and t in _head_dim.CUDA_HEAD_DIMS for d, t in enumerate(tiles, start=1))
    assert [_head_dim.cuda_tile(d) for d in (8, 33, 72, 81, 160)] == [32, 64, 80, 96, 256]


# ---- dropout ------------------------------------------------------------------------------------------

def _identity_values(batch, heads_kv, seq_k, head_dim, device):
    """v with v[.., j, j] = 1: out[.., i, j] is then the dropped, rescaled probability of key j."""
    v = torch.zeros(batch, heads_kv, seq_k, head_dim, device=device)
    v[..., torch.arange(seq_k), torch.arange(seq_k)] = 1.0
    return v


@pytest.mark.parametrize("shape", [(2, 2, 1, 17, 32, 32), (1, 4, 2, 1, 97, 128)],
                         ids=["prefill_gqa", "decode_split_k"])  # (B, H, Hkv, Sq, Sk, D)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_drops_exactly_the_philox_mask(backend, attention_device, shape):
    device = attention_device
    batch, heads, heads_kv, seq_q, seq_k, head_dim = shape
    q = torch.randn(batch, heads, seq_q, head_dim, device=device)
    k = torch.randn(batch, heads_kv, seq_k, head_dim, device=device)
    v = _identity_values(batch, heads_kv, seq_k, head_dim, device)
    torch.manual_seed(1234)
    out = attention(q, k, v, dropout_p=0.25, backend=backend)
    torch.manual_seed(1234)
    seed = draw_dropout_seed()
    keep = dropout_keep_mask(seed, 0.25, batch, heads, seq_q, seq_k, device)
    assert torch.equal(out[..., :seq_k] != 0, keep), "dropped elements differ from the Philox mask"
    expected = attention_ref(q, k, v, dropout_p=0.25, dropout_seed=seed)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert 0.6 < keep.float().mean().item() < 0.9


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_reproducible_from_torch_seed(backend, attention_device):
    device = attention_device
    inputs = Case("dropout", causal=True).inputs(torch.float32, device)
    torch.manual_seed(7)
    first = attention(**inputs, dropout_p=0.5, backend=backend)
    torch.manual_seed(7)
    again = attention(**inputs, dropout_p=0.5, backend=backend)
    other = attention(**inputs, dropout_p=0.5, backend=backend)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_backward_matches_reference(backend, attention_device):
    device = attention_device
    inputs = Case("dropout", heads=4, heads_kv=2, bias=(1, 4, 17, 33), bias_grad=True, causal=True).inputs(
        torch.float32, device, requires_grad=True)
    torch.manual_seed(3)
    grads = torch.autograd.grad(attention(**inputs, dropout_p=0.2, backend=backend).sum(), _leaves(inputs))
    inputs64 = _to(inputs, torch.float64)
    torch.manual_seed(3)
    ref = attention_ref(**inputs64, dropout_p=0.2)
    for got, expected in zip(grads, torch.autograd.grad(ref.sum(), _leaves(inputs64))):
        torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-5)


# ---- T5 relative bias ---------------------------------------------------------------------------------

@pytest.mark.parametrize("num_buckets,max_distance,bidirectional",
                         [(32, 128, True), (32, 128, False), (16, 20, True), (8, 10, False)])
def test_t5_buckets_match_transformers(num_buckets, max_distance, bidirectional):
    t5 = pytest.importorskip("transformers.models.t5.modeling_t5", reason="transformers is not installed")
    spec = T5RelativeBias(torch.zeros(num_buckets, 1), num_buckets, max_distance, bidirectional)
    for seq_q, seq_k in [(300, 300), (1, 400), (50, 310)]:
        i = torch.arange(seq_q)[:, None] + (seq_k - seq_q)  # bottom-right aligned query positions
        j = torch.arange(seq_k)[None, :]
        expected = t5.T5Attention._relative_position_bucket(j - i, bidirectional, num_buckets, max_distance)
        assert torch.equal(spec.buckets(seq_q, seq_k), expected)


def test_t5_materialize_is_table_lookup():
    table = torch.randn(32, 3)
    spec = T5RelativeBias(table, 32, 20, bidirectional=True)
    dense = spec.materialize(5, 9)  # [1, H, Sq, Sk]
    buckets = spec.buckets(5, 9)
    assert dense.shape == (1, 3, 5, 9)
    assert torch.equal(dense[0, 2], table[buckets, 2])


# ---- registration -------------------------------------------------------------------------------------

def _op_args(device, t5=False, dropout_p=0.0):
    case = Case("opcheck", batch=1, heads=2, heads_kv=1, seq_q=5, seq_k=7, bias=(1, 2, 5, 7), bias_grad=True,
                padding="random", causal=True, t5="encoder" if t5 else None)
    inputs = case.inputs(torch.float32, device, requires_grad=True)
    bias = inputs["attn_bias"]
    rel_table = rel_lut = None
    if t5:
        rel_table, rel_lut, bias = bias.table, bias.lut(), None
    else:
        bias = bias.expand(1, 2, 5, 7)
    return (inputs["q"], inputs["k"], inputs["v"], bias, inputs["key_padding_mask"], rel_table, rel_lut, True, True,
            0.2, dropout_p, 1234)


@pytest.mark.parametrize("t5,dropout_p", [(False, 0.0), (True, 0.3)], ids=["bias", "t5_dropout"])
@pytest.mark.parametrize("backend", ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_opcheck(backend, attention_device, t5, dropout_p):
    device = attention_device
    ops_key = "triton" if backend == "triton" else "cpp"
    args = _op_args(device, t5, dropout_p)
    torch.library.opcheck(_attention.FWD_OPS[ops_key], args)
    out, lse = _attention.FWD_OPS[ops_key](*args)
    grad_out = torch.randn_like(out)
    bwd_args = (grad_out, *[a.detach() if isinstance(a, torch.Tensor) else a for a in args[:3]], out.detach(), lse,
                *[a.detach() if isinstance(a, torch.Tensor) else a for a in args[3:]], not t5)
    torch.library.opcheck(_attention.BWD_OPS[ops_key], bwd_args, test_utils=("test_schema", "test_faketensor"))


@pytest.mark.slow
@pytest.mark.parametrize("t5", [False, True], ids=["bias_padding", "t5"])
@pytest.mark.parametrize("backend", ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compile_fullgraph(backend, attention_device, t5):
    device = attention_device
    case = Case("compile", heads=4, heads_kv=2, bias=None if t5 else (2, 1, 17, 33), bias_grad=not t5,
                padding=None if t5 else "random", causal=True, t5="encoder" if t5 else None)
    inputs = case.inputs(torch.float32, device, requires_grad=True)

    def fn(**kwargs):
        return attention(**kwargs, backend=backend)

    assert_compiled_matches_eager(fn, inputs, _leaves(inputs))


# ---- bad input ----------------------------------------------------------------------------------------

def _qkv(q_shape=(1, 2, 5, 32), kv_shape=(1, 2, 7, 32), dtype=torch.float32):
    return torch.randn(q_shape).to(dtype), torch.randn(kv_shape).to(dtype), torch.randn(kv_shape).to(dtype)


BAD_INPUTS = [
    ("q_not_4d", lambda: attention(torch.randn(2, 5, 32), *_qkv()[1:]), ValueError, "q must be 4-D"),
    ("q_not_tensor", lambda: attention([1.0], *_qkv()[1:]), TypeError, "q must be a torch.Tensor"),
    ("int_dtype", lambda: attention(*_qkv(dtype=torch.int32)), TypeError, "q must be float16"),
    ("k_dtype_mismatch", lambda: attention(_qkv()[0], *_qkv(dtype=torch.float64)[1:]), TypeError,
     "k must have the dtype of q"),
    ("heads_not_multiple", lambda: attention(*_qkv((1, 3, 5, 32), (1, 2, 7, 32))), ValueError,
     "multiple of the heads of k"),
    ("zero_head_dim", lambda: attention(*_qkv((1, 2, 5, 0), (1, 2, 7, 0))), ValueError, "head dim D >= 1"),
    ("batch_mismatch", lambda: attention(*_qkv((2, 2, 5, 32), (1, 2, 7, 32))), ValueError, "k must have shape"),
    ("k_v_mismatch", lambda: attention(_qkv()[0], torch.randn(1, 2, 7, 32), torch.randn(1, 2, 8, 32)), ValueError,
     "k and v must have the same shape"),
    ("mixed_devices", lambda: attention(_qkv()[0], torch.randn(1, 2, 7, 32, device="meta"), _qkv()[2]), ValueError,
     "k must be on the device of q"),
    ("padding_mask_shape", lambda: attention(*_qkv(), key_padding_mask=torch.ones(1, 5, dtype=torch.bool)),
     ValueError, "key_padding_mask must have shape [B, Sk] = [1, 7]"),
    ("padding_mask_dtype", lambda: attention(*_qkv(), key_padding_mask=torch.ones(1, 7)), TypeError,
     "key_padding_mask must be a bool tensor"),
    ("bias_shape", lambda: attention(*_qkv(), attn_bias=torch.randn(5, 8)), ValueError,
     "attn_bias must be broadcastable to [B, H, Sq, Sk] = [1, 2, 5, 7]"),
    ("bias_dtype", lambda: attention(*_qkv(), attn_bias=torch.ones(5, 7, dtype=torch.int64)), TypeError,
     "attn_bias must be a float (additive) or bool tensor"),
    ("bias_type", lambda: attention(*_qkv(), attn_bias=[0.0]), TypeError, "attn_bias must be a torch.Tensor"),
    ("t5_heads", lambda: attention(*_qkv(), attn_bias=T5RelativeBias(torch.randn(32, 3))), ValueError,
     "table has 3 heads, q has H=2"),
    ("t5_table_shape", lambda: T5RelativeBias(torch.randn(16, 2), num_buckets=32), ValueError,
     "table must have shape [num_buckets=32, H]"),
    ("dropout_range", lambda: attention(*_qkv(), dropout_p=1.0), ValueError, "dropout_p must be a number in [0, 1)"),
    ("causal_type", lambda: attention(*_qkv(), causal=1), TypeError, "causal must be a bool"),
    ("scale_nan", lambda: attention(*_qkv(), scale=math.nan), ValueError, "scale must be a finite number"),
    ("backend_name", lambda: attention(*_qkv(), backend="tpu"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("call,error,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(call, error, message):
    with pytest.raises(error) as info:
        call()
    assert message in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(GPU is None, reason="needs a CUDA GPU")
def test_fp64_on_cuda_with_triton_is_a_type_error():
    q = torch.randn(1, 2, 5, 32, device=GPU, dtype=torch.float64)
    with pytest.raises(TypeError, match="float64 attention runs on CPU tensors"):
        attention(q, q, q, backend="triton")
