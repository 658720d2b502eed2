"""ff.ops.varlen_attention on every backend against the per-sequence fp64 reference (itself checked against
ff.ops.attention's reference on the left-padded batch), autograd, dropout, torch.compile and bad inputs.

Accuracy rule (DESIGN.md): a backend's error against varlen_attention_ref in fp64 is at most 2x the error of
varlen_attention_ref run in the same low dtype, plus a small atol. Interpreted Triton shapes stay small.
"""
import dataclasses
import itertools
import math

import pytest
import torch

from fastformer.ops import T5RelativeBias, _varlen_attention, attention_ref, varlen_attention, varlen_attention_ref
from tests.compiled import assert_compiled_matches_eager
from tests.tolerance import assert_as_accurate

BACKENDS = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu), "reference"]


@pytest.fixture
def varlen_device(backend):
    from tests.conftest import backend_device

    return backend_device(backend)


# ---- cases ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    lengths_q: tuple
    lengths_k: tuple | None = None  # None: the lengths of q (self-attention)
    heads: int = 2
    heads_kv: int = 2
    head_dim: int = 16
    causal: bool = False
    t5: str | None = None  # "encoder" (bidirectional) or "decoder"

    def inputs(self, dtype, device, requires_grad=False, seed=0) -> dict:
        gen = torch.Generator().manual_seed(seed)
        lengths_k = self.lengths_k if self.lengths_k is not None else self.lengths_q

        def randn(*shape):
            return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)

        out = dict(q=randn(sum(self.lengths_q), self.heads, self.head_dim),
                   k=randn(sum(lengths_k), self.heads_kv, self.head_dim),
                   v=randn(sum(lengths_k), self.heads_kv, self.head_dim),
                   cu_seqlens_q=cu_seqlens(self.lengths_q, device), cu_seqlens_k=cu_seqlens(lengths_k, device),
                   max_seqlen_q=max(self.lengths_q, default=0), max_seqlen_k=max(lengths_k, default=0),
                   causal=self.causal)
        if self.t5:
            # max_distance 10 < the longest sequences, so saturated buckets occur.
            out["attn_bias"] = T5RelativeBias(randn(16, self.heads), 16, 10, bidirectional=self.t5 == "encoder")
        return out


def cu_seqlens(lengths, device="cpu") -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


CASES = [
    Case("mixed", (5, 13, 1, 9)),
    Case("single_token_and_empty", (1, 0, 11, 1)),
    Case("all_equal", (8, 8, 8)),
    Case("one_sequence", (19,)),
    Case("causal_mixed", (5, 13, 1, 9), causal=True),
    Case("causal_cross_more_queries", (6, 9, 2), (4, 9, 5), causal=True),  # bottom-right per sequence
    Case("cross_lengths_with_empty_keys", (3, 4, 2), (7, 0, 5)),
    Case("gqa_causal", (7, 12, 3), heads=4, heads_kv=2, causal=True),
    Case("mqa", (9, 4), heads=3, heads_kv=1),
    Case("t5_encoder", (4, 15, 1, 10), t5="encoder"),
    Case("t5_decoder_causal_gqa", (4, 15, 10), heads=4, heads_kv=2, causal=True, t5="decoder"),
    Case("head_dim_1", (5, 3), head_dim=1),
    Case("head_dim_13", (5, 3, 8), head_dim=13),
    Case("head_dim_80", (6, 2), head_dim=80),
]
LOW_DTYPES = [torch.float32, torch.bfloat16]


def _skip_interpreted_bf16(backend, device, dtype) -> None:
    if backend == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
        pytest.skip("tl.dot on bf16 returns garbage under TRITON_INTERPRET (triton-lang/triton#11584)")


def _to(inputs: dict, dtype) -> dict:
    def convert(value):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.detach().to(dtype).requires_grad_(value.requires_grad)
        if isinstance(value, T5RelativeBias):
            return dataclasses.replace(value, table=convert(value.table))
        return value

    return {name: convert(value) for name, value in inputs.items()}


def _leaves(inputs: dict) -> list:
    bias = inputs.get("attn_bias")
    return [inputs["q"], inputs["k"], inputs["v"]] + ([bias.table] if isinstance(bias, T5RelativeBias) else [])


def _pad_left_reference(inputs: dict) -> torch.Tensor:
    """attention_ref on the left-padded batch, unpacked in a Python loop: the docstring's equivalence."""
    lengths_q = (inputs["cu_seqlens_q"].diff()).tolist()
    lengths_k = (inputs["cu_seqlens_k"].diff()).tolist()
    seq_q, seq_k = inputs["max_seqlen_q"], inputs["max_seqlen_k"]

    def pad(x, lengths, seq):
        padded = x.new_zeros((len(lengths), seq, *x.shape[1:]))
        for b, rows in enumerate(torch.split(x, lengths)):
            padded[b, seq - rows.shape[0]:] = rows
        return padded.transpose(1, 2)  # [B, H, S, D]

    keep = torch.tensor([[j >= seq_k - n for j in range(seq_k)] for n in lengths_k], dtype=torch.bool)
    out = attention_ref(pad(inputs["q"], lengths_q, seq_q), pad(inputs["k"], lengths_k, seq_k),
                        pad(inputs["v"], lengths_k, seq_k), inputs.get("attn_bias"), keep, inputs["causal"])
    return torch.cat([out[b, :, seq_q - n:].transpose(0, 1) for b, n in enumerate(lengths_q)])


# ---- semantics ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_reference_is_attention_on_the_left_padded_batch(case):
    inputs = case.inputs(torch.float64, "cpu")
    ref = varlen_attention_ref(**inputs)
    assert ref.shape == inputs["q"].shape
    torch.testing.assert_close(ref, _pad_left_reference(inputs), rtol=1e-12, atol=1e-12)


def test_reference_sequences_do_not_see_each_other():
    """Changing one sequence's keys changes only that sequence's output rows."""
    inputs = Case("mixed", (5, 13, 1, 9)).inputs(torch.float64, "cpu")
    before = varlen_attention_ref(**inputs)
    k = inputs["k"].clone()
    k[5:18] += 1.0  # sequence 1
    after = varlen_attention_ref(**dict(inputs, k=k))
    changed = (after - before).abs().amax(dim=(1, 2)) > 0
    assert changed[5:18].all() and not changed[:5].any() and not changed[18:].any()


# ---- every backend against the fp64 reference -----------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_matches_fp64_reference(backend, varlen_device, dtype, case):
    _skip_interpreted_bf16(backend, varlen_device, dtype)
    inputs = case.inputs(dtype, varlen_device)
    out = varlen_attention(**inputs, backend=backend)
    assert out.shape == inputs["q"].shape and out.dtype == dtype
    ref64 = varlen_attention_ref(**_to(inputs, torch.float64))
    assert_as_accurate(out, varlen_attention_ref(**inputs), ref64, dtype)
    if case.causal:
        assert torch.isfinite(out).all()


def test_float64_matches_reference_tightly():
    inputs = Case("causal_mixed", (5, 13, 1, 9), causal=True, t5="encoder").inputs(torch.float64, "cpu")
    torch.testing.assert_close(varlen_attention(**inputs), varlen_attention_ref(**inputs), rtol=1e-12, atol=1e-12)


BACKWARD_CASES = [c for c in CASES if c.name in ("mixed", "single_token_and_empty", "causal_cross_more_queries",
                                                 "gqa_causal", "t5_encoder", "t5_decoder_causal_gqa",
                                                 "head_dim_13")]


@pytest.mark.parametrize("case", BACKWARD_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("dtype", LOW_DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_fp64_reference(backend, varlen_device, dtype, case):
    _skip_interpreted_bf16(backend, varlen_device, dtype)
    inputs = case.inputs(dtype, varlen_device, requires_grad=True)
    grad_out = torch.randn(inputs["q"].shape, generator=torch.Generator().manual_seed(1)).to(varlen_device, dtype)
    grads = torch.autograd.grad(varlen_attention(**inputs, backend=backend), _leaves(inputs), grad_out)
    inputs64 = _to(inputs, torch.float64)
    grads64 = torch.autograd.grad(varlen_attention_ref(**inputs64), _leaves(inputs64), grad_out.double())
    baselines = torch.autograd.grad(varlen_attention_ref(**inputs), _leaves(inputs), grad_out)
    for name, got, ref64, baseline in zip(["dq", "dk", "dv", "dtable"], grads, grads64, baselines):
        assert got.dtype == dtype, name
        # lse is stored in fp32 by the kernels: p = exp(s - lse) carries ~2^-24 |lse| (see test_attention.py).
        assert_as_accurate(got, baseline, ref64, dtype, name=name)


@pytest.mark.parametrize("draw", range(6))
def test_random_length_mixes_fwd_bwd_fp64(draw):
    """The CPU kernel against the reference on random batches (1..7 sequences of 0..70 tokens, cross lengths,
    causal or not, GQA or not, T5 or not), both in fp64."""
    gen = torch.Generator().manual_seed(draw)
    batch = int(torch.randint(1, 8, (1,), generator=gen))
    lengths_q = tuple(torch.randint(0, 71, (batch,), generator=gen).tolist())
    lengths_k = lengths_q if draw % 2 == 0 else tuple(torch.randint(0, 71, (batch,), generator=gen).tolist())
    case = Case(f"draw{draw}", lengths_q, lengths_k, heads=4, heads_kv=(4, 2, 1)[draw % 3], head_dim=24,
                causal=draw % 4 < 2, t5="encoder" if draw % 3 == 0 else None)
    inputs = case.inputs(torch.float64, "cpu", requires_grad=True)
    grad_out = torch.randn(inputs["q"].shape, generator=gen, dtype=torch.float64)
    out, ref = varlen_attention(**inputs, backend="cpu"), varlen_attention_ref(**inputs)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # The backward reads lse stored in fp32 (the contract): p = exp(s - lse) carries ~2^-24 |lse| relative error.
    for got, expected in zip(torch.autograd.grad(out, _leaves(inputs), grad_out),
                             torch.autograd.grad(ref, _leaves(inputs), grad_out)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_gradcheck_fp64(backend, varlen_device):
    inputs = Case("t5_causal_gqa", (3, 0, 1, 4), heads=2, heads_kv=1, head_dim=5, causal=True,
                  t5="decoder").inputs(torch.float64, varlen_device, requires_grad=True)

    def fn(q, k, v, table):
        bias = dataclasses.replace(inputs["attn_bias"], table=table)
        return varlen_attention(**dict(inputs, q=q, k=k, v=v, attn_bias=bias), backend=backend)

    assert torch.autograd.gradcheck(fn, _leaves(inputs), fast_mode=True, atol=1e-6, rtol=1e-4)


# ---- dropout ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("extra_max_seqlen", [0, 3])
@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_dropout_is_the_padded_batch_mask(backend, varlen_device, extra_max_seqlen):
    """Every backend drops the elements the reference drops for the same torch seed, and the reference's
    mask is ff.ops.attention's Philox mask on the batch left-padded to max_seqlen (which may exceed every length)."""
    inputs = Case("causal_cross", (6, 1, 2), (4, 9, 5), causal=True).inputs(torch.float64, varlen_device)
    inputs["max_seqlen_q"] += extra_max_seqlen
    inputs["max_seqlen_k"] += extra_max_seqlen
    torch.manual_seed(7)
    out = varlen_attention(**inputs, dropout_p=0.4, backend=backend)
    torch.manual_seed(7)
    ref = varlen_attention_ref(**inputs, dropout_p=0.4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    assert not torch.equal(ref, varlen_attention_ref(**inputs)), "dropout must change the output"


# ---- layouts and registration --------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_strided_views_of_fused_qkv(backend, varlen_device):
    """q, k, v as views of one [T, 3, H, D] projection (row stride 3 * H * D) run without a copy."""
    inputs = Case("mixed", (5, 13, 1, 9), heads=2, head_dim=8).inputs(torch.float64, varlen_device)
    qkv = torch.randn(28, 3, 2, 8, dtype=torch.float64, device=varlen_device)
    views = dict(inputs, q=qkv[:, 0], k=qkv[:, 1], v=qkv[:, 2])
    contiguous = dict(views, **{name: views[name].contiguous() for name in ("q", "k", "v")})
    torch.testing.assert_close(varlen_attention(**views, backend=backend), varlen_attention_ref(**contiguous),
                               rtol=1e-12, atol=1e-12)


def _op_args(t5: bool, dropout_p: float):
    inputs = Case("opcheck", (3, 0, 1, 4), (2, 3, 0, 5), heads=2, heads_kv=1, head_dim=8, causal=True,
                  t5="encoder" if t5 else None).inputs(torch.float32, "cpu", requires_grad=True)
    bias = inputs.get("attn_bias")
    rel_table, rel_lut = (bias.table, bias.lut()) if t5 else (None, None)
    return (inputs["q"], inputs["k"], inputs["v"], inputs["cu_seqlens_q"], inputs["cu_seqlens_k"], 4, 6, rel_table,
            rel_lut, True, True, 0.3, dropout_p, 1234)


@pytest.mark.parametrize("t5,dropout_p", [(False, 0.0), (True, 0.3)], ids=["plain", "t5_dropout"])
def test_opcheck(t5, dropout_p):
    args = _op_args(t5, dropout_p)
    torch.library.opcheck(_varlen_attention.FWD_OP, args)
    out, lse = _varlen_attention.FWD_OP(*args)
    assert lse.shape == (args[0].shape[0], args[0].shape[1]) and lse.dtype == torch.float32
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    bwd_args = (torch.randn_like(out), *detached[:3], out.detach(), lse, *detached[3:])
    torch.library.opcheck(_varlen_attention.BWD_OP, bwd_args, test_utils=("test_schema", "test_faketensor"))


# ---- torch.compile ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu"])
def test_compile_fullgraph(backend, varlen_device):
    inputs = Case("compile", (5, 0, 1, 9), heads=4, heads_kv=2, causal=True,
                  t5="encoder").inputs(torch.float32, varlen_device, requires_grad=True)

    def fn(**kwargs):
        return varlen_attention(**kwargs, backend=backend)

    assert_compiled_matches_eager(fn, inputs, _leaves(inputs))


@pytest.mark.slow
def test_compile_dynamic_traces_one_graph_for_every_batch():
    """Offsets and max_seqlen are inputs (max_seqlen a SymInt), so new lengths need no recompile and no sync."""
    def fn(q, cu, max_seqlen):
        return varlen_attention(q, q, q, cu, cu, max_seqlen, max_seqlen, causal=True, backend="cpu")

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    for lengths in ((5, 17, 1), (9, 0, 30), (2, 2, 40)):
        q = torch.randn(sum(lengths), 2, 8)
        cu = cu_seqlens(lengths)
        torch.testing.assert_close(compiled(q, cu, max(lengths)),
                                   varlen_attention_ref(q, q, q, cu, cu, max(lengths), max(lengths), causal=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


# ---- bad input ----------------------------------------------------------------------------------------

def _args(lengths=(3, 4), heads=2, heads_kv=2, head_dim=8, **overrides):
    total = sum(lengths)
    args = dict(q=torch.randn(total, heads, head_dim), k=torch.randn(total, heads_kv, head_dim),
                v=torch.randn(total, heads_kv, head_dim), cu_seqlens_q=cu_seqlens(lengths),
                cu_seqlens_k=cu_seqlens(lengths), max_seqlen_q=max(lengths), max_seqlen_k=max(lengths))
    args.update(overrides)
    return args


BAD_INPUTS = [
    ("q_not_3d", dict(q=torch.randn(1, 7, 2, 8)), ValueError, "q must be 3-D ([Tq, H, D])"),
    ("q_not_tensor", dict(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    ("k_dtype", dict(k=torch.randn(7, 2, 8, dtype=torch.float64)), TypeError, "k must have the dtype of q"),
    ("k_device", dict(k=torch.randn(7, 2, 8, device="meta")), ValueError, "k must be on the device of q"),
    ("head_dim_mismatch", dict(k=torch.randn(7, 2, 4), v=torch.randn(7, 2, 4)), ValueError,
     "k must have shape [Tk, Hkv, D=8]"),
    ("k_v_mismatch", dict(v=torch.randn(6, 2, 8)), ValueError, "k and v must have the same shape"),
    ("heads_not_multiple", dict(k=torch.randn(7, 3, 8), v=torch.randn(7, 3, 8)), ValueError,
     "multiple of the heads of k"),
    ("cu_dtype", dict(cu_seqlens_q=torch.tensor([0, 3, 7])), TypeError, "cu_seqlens_q must be int32"),
    ("cu_not_tensor", dict(cu_seqlens_k=[0, 3, 7]), TypeError, "cu_seqlens_k must be an int32 torch.Tensor"),
    ("cu_shape", dict(cu_seqlens_q=torch.zeros(2, 3, dtype=torch.int32)), ValueError, "cu_seqlens_q must be 1-D"),
    ("cu_device", dict(cu_seqlens_q=torch.zeros(3, dtype=torch.int32, device="meta")), ValueError,
     "cu_seqlens_q must be on the device of q"),
    ("cu_batch_mismatch", dict(cu_seqlens_k=cu_seqlens((3, 2, 2))), ValueError,
     "cu_seqlens_q and cu_seqlens_k must hold the same number of sequences"),
    ("cu_start", dict(cu_seqlens_q=torch.tensor([1, 3, 7], dtype=torch.int32)), ValueError,
     "cu_seqlens_q must start at 0"),
    ("cu_decreasing", dict(cu_seqlens_k=torch.tensor([0, 5, 4, 7], dtype=torch.int32),
                           cu_seqlens_q=cu_seqlens((3, 2, 2))), ValueError, "cu_seqlens_k must be non-decreasing"),
    ("cu_total", dict(cu_seqlens_q=cu_seqlens((3, 3))), ValueError,
     "cu_seqlens_q[-1] = 6 must equal the number of rows of q (7)"),
    ("max_seqlen_short", dict(max_seqlen_k=3), ValueError, "max_seqlen_k = 3 is less than the longest sequence"),
    ("max_seqlen_tensor", dict(max_seqlen_q=torch.tensor(4)), TypeError, "max_seqlen_q must be a Python int"),
    ("max_seqlen_negative", dict(max_seqlen_q=-1), ValueError, "max_seqlen_q must be >= 0"),
    ("dense_bias", dict(attn_bias=torch.zeros(7, 7)), TypeError, "attn_bias of varlen_attention must be a "
                                                                   "T5RelativeBias or None"),
    ("t5_heads", dict(attn_bias=T5RelativeBias(torch.randn(32, 3))), ValueError, "table has 3 heads, q has H=2"),
    ("causal_type", dict(causal=1), TypeError, "causal must be a bool"),
    ("scale_nan", dict(scale=math.nan), ValueError, "scale must be a finite number"),
    ("dropout_range", dict(dropout_p=1.0), ValueError, "dropout_p must be a number in [0, 1)"),
    ("backend_name", dict(backend="tpu"), ValueError, "backend must be one of"),
]


@pytest.mark.parametrize("overrides,error,message", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_naming_the_argument(overrides, error, message):
    with pytest.raises(error) as info:
        varlen_attention(**_args(**overrides))
    assert message in str(info.value)
