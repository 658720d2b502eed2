"""The C++ CPU attention kernels, torch.ops.fastformer.attention_fwd / attention_bwd, called directly.

Checked against a materialized PyTorch reference written here (fp64, and the same math in the input dtype to
set the error budget): an op's error must be at most 2x the same-dtype reference's error against fp64, plus a
small atol. Dropout is checked bit for bit against Triton's tl.rand run under TRITON_INTERPRET=1.
"""
import contextlib
import math
import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton runs tl.rand on the CPU only if set before Triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastformer  # noqa: E402,F401  (loads fastformer._C, which registers the ops)

attention_fwd = torch.ops.fastformer.attention_fwd
attention_bwd = torch.ops.fastformer.attention_bwd

# Absolute slack on top of 2x the same-dtype reference's error. fp32 probabilities use exp with ~2e-6 relative
# error (at::vec exp_u20); bf16/fp16 outputs are rounded once at the end.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 4e-3, torch.float16: 1e-3}


@contextlib.contextmanager
def intra_op_threads(n: int):
    """Runs the block with n intra-op threads: the backward picks its work split from B * Hkv / threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- reference -------------------------------------------------------------------------------------------------

def t5_lut(num_buckets: int, max_distance: int, bidirectional: bool) -> torch.Tensor:
    """int32 [max_distance + 1]: T5's bucket of each distance within one direction's half."""
    half = num_buckets // 2 if bidirectional else num_buckets
    max_exact = half // 2
    n = torch.arange(max_distance + 1)
    log_ratio = torch.log(n.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return torch.where(n < max_exact, n, large).int()


def t5_bias(table: torch.Tensor, lut: torch.Tensor, bidirectional: bool, seq_q: int, seq_k: int) -> torch.Tensor:
    """The T5 bias of the schema comment, materialized: [1, H, Sq, Sk]."""
    i = torch.arange(seq_q)[:, None]
    j = torch.arange(seq_k)[None, :]
    rel = j - (i + seq_k - seq_q)  # [Sq, Sk]
    distance = rel.abs() if bidirectional else (-rel).clamp(min=0)
    bucket = lut.long()[distance.clamp(max=lut.shape[0] - 1)]
    if bidirectional:
        bucket = bucket + (rel > 0).long() * (table.shape[0] // 2)
    return table[bucket].permute(2, 0, 1).unsqueeze(0)


def reference(q, k, v, *, scale, bias=None, key_padding_mask=None, rel=None, causal=False, keep=None,
              dropout_p=0.0, dtype=torch.float64):
    """Materialized attention in `dtype`: (out [B, H, Sq, D], lse [B, H, Sq]; rows with no kept key: 0, +inf).

    rel = (table, lut, bidirectional); keep = bool [B, H, Sq, Sk] dropout mask.
    """
    q, k, v = (t.to(dtype) for t in (q, k, v))
    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[2]
    k = k.repeat_interleave(heads // k.shape[1], dim=1)  # [B, H, Sk, D]
    v = v.repeat_interleave(heads // v.shape[1], dim=1)
    s = (q @ k.transpose(-1, -2)) * scale  # [B, H, Sq, Sk]
    if bias is not None:
        s = s + bias.to(dtype)
    if rel is not None:
        s = s + t5_bias(rel[0], rel[1], rel[2], seq_q, seq_k).to(dtype)
    kept = torch.ones(batch, 1, seq_q, seq_k, dtype=torch.bool)
    if key_padding_mask is not None:
        kept = kept & key_padding_mask[:, None, None, :]
    if causal:
        kept = kept & torch.ones(seq_q, seq_k, dtype=torch.bool).tril(seq_k - seq_q)
    s = s.masked_fill(~kept, -math.inf)
    empty = ~kept.any(-1, keepdim=True)  # [B, 1, Sq, 1]
    s = s.masked_fill(empty, 0)  # finite rows, so softmax and its gradient stay free of NaN
    lse = torch.logsumexp(s, dim=-1).masked_fill(empty[..., 0], math.inf)
    probs = torch.softmax(s, dim=-1).masked_fill(empty, 0)
    if keep is not None:
        probs = probs * keep / (1 - dropout_p)
    return probs @ v, lse


def assert_error_within_budget(actual, expected, same_dtype, atol, what):
    """|actual - expected| <= 2 |same_dtype - expected| + atol (max over elements; infinities must coincide)."""
    actual, expected, same_dtype = actual.double(), expected.double(), same_dtype.double()
    inf = torch.isinf(expected)
    assert torch.equal(torch.isinf(actual), inf), f"{what}: infinities differ"
    assert not torch.isnan(actual).any(), f"{what}: NaN"
    err = (actual - expected)[~inf].abs().max().item() if (~inf).any() else 0.0
    budget = (same_dtype - expected)[~inf].abs().max().item() if (~inf).any() else 0.0
    assert err <= 2 * budget + atol, f"{what}: error {err:.3g} > 2 x {budget:.3g} + {atol:g}"


# ---- inputs ----------------------------------------------------------------------------------------------------

def make_case(*, batch=2, heads=4, kv_heads=None, seq_q=33, seq_k=None, head_dim=64, dtype=torch.float32,
              bias=None, padding=False, t5=None, causal=False, fused_qkv=False, bias_dtype=None):
    """Random inputs as keyword arguments of the ops. padding: False, True (a random length per sequence) or "random"
    (any key masked); bias: None, "broadcast" ([B, 1, Sq, Sk] expanded) or "full";
    t5: None, "bidirectional" or "causal" (unidirectional); fused_qkv: q, k, v are strided views of [B, S, 3, H, D]."""
    kv_heads = kv_heads or heads
    seq_k = seq_k or seq_q
    if fused_qkv:
        assert seq_q == seq_k and kv_heads == heads
        qkv = torch.randn(batch, seq_q, 3, heads, head_dim, dtype=dtype)  # [B, S, 3, H, D]
        q, k, v = (qkv[:, :, n].transpose(1, 2) for n in range(3))  # [B, H, S, D] views
    else:
        q = torch.randn(batch, heads, seq_q, head_dim, dtype=dtype)
        k = torch.randn(batch, kv_heads, seq_k, head_dim, dtype=dtype)
        v = torch.randn(batch, kv_heads, seq_k, head_dim, dtype=dtype)
    case = dict(q=q, k=k, v=v, attn_bias=None, key_padding_mask=None, rel_table=None, rel_lut=None,
                rel_bidirectional=False, causal=causal, scale=head_dim ** -0.5, dropout_p=0.0, seed=0)
    if bias is not None:
        shape = (batch, 1, seq_q, seq_k) if bias == "broadcast" else (batch, heads, seq_q, seq_k)
        case["bias_leaf"] = torch.randn(shape, dtype=bias_dtype or dtype)
        case["attn_bias"] = case["bias_leaf"].expand(batch, heads, seq_q, seq_k)
    if padding == "random":  # masked keys anywhere, not just at the end
        case["key_padding_mask"] = torch.rand(batch, seq_k) > 0.4  # [B, Sk]
    elif padding:
        lengths = torch.randint(1, seq_k + 1, (batch,))
        lengths[0] = seq_k
        case["key_padding_mask"] = torch.arange(seq_k)[None, :] < lengths[:, None]  # [B, Sk]
    if t5 is not None:
        bidirectional = t5 == "bidirectional"
        case.update(rel_table=torch.randn(32, heads, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
                    rel_lut=t5_lut(32, 20, bidirectional), rel_bidirectional=bidirectional)
    return case


OP_ARGS = ("q", "k", "v", "attn_bias", "key_padding_mask", "rel_table", "rel_lut", "rel_bidirectional", "causal",
           "scale", "dropout_p", "seed")


def run_fwd(case):
    return attention_fwd(*(case[name] for name in OP_ARGS))


def run_bwd(c, grad_out, out, lse, bias_needs_grad):
    return attention_bwd(grad_out, c["q"], c["k"], c["v"], out, lse, c["attn_bias"], c["key_padding_mask"],
                         c["rel_table"], c["rel_lut"], c["rel_bidirectional"], c["causal"], c["scale"],
                         c["dropout_p"], c["seed"], bias_needs_grad)


def run_reference(case, dtype=torch.float64, keep=None):
    rel = None if case["rel_table"] is None else (case["rel_table"], case["rel_lut"], case["rel_bidirectional"])
    return reference(case["q"], case["k"], case["v"], scale=case["scale"], bias=case["attn_bias"],
                     key_padding_mask=case["key_padding_mask"], rel=rel, causal=case["causal"], keep=keep,
                     dropout_p=case["dropout_p"], dtype=dtype)


def check_forward(case, keep=None):
    out, lse = run_fwd(case)
    dtype = case["q"].dtype
    assert out.dtype == dtype and out.shape == case["q"].shape and out.is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == case["q"].shape[:3]
    expected_out, expected_lse = run_reference(case, keep=keep)
    same_out, same_lse = run_reference(case, dtype=dtype, keep=keep)
    assert_error_within_budget(out, expected_out, same_out, ATOL[dtype], "out")
    # lse is fp32 for every input dtype: budget it against an fp32 reference at least.
    lse_budget = run_reference(case, dtype=torch.float32 if dtype == torch.float64 else dtype, keep=keep)[1]
    assert_error_within_budget(lse, expected_lse, lse_budget, ATOL[torch.float32], "lse")
    return out, lse


# ---- forward ---------------------------------------------------------------------------------------------------

FEATURES = {
    "plain": dict(),
    "padding": dict(padding=True),
    "random_mask": dict(seq_q=20, seq_k=150, padding="random"),
    "causal_sq_lt_sk": dict(seq_q=17, seq_k=97, causal=True),
    "causal_sq_gt_sk": dict(seq_q=97, seq_k=17, causal=True),  # queries 0..79 keep no key
    "cross_padded": dict(seq_q=17, seq_k=150, padding=True),
    "gqa": dict(heads=6, kv_heads=2),
    "bias_broadcast": dict(bias="broadcast"),
    "bias_full_fp32": dict(bias="full", bias_dtype=torch.float32),
    "t5_bidirectional": dict(seq_q=40, seq_k=70, t5="bidirectional"),
    "t5_causal": dict(seq_q=70, seq_k=70, t5="causal", causal=True),
    "everything": dict(heads=4, kv_heads=2, seq_q=45, seq_k=140, padding=True, causal=True, bias="broadcast",
                       t5="bidirectional"),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("feature", FEATURES)
def test_forward_matches_reference(feature, dtype):
    torch.manual_seed(0)
    check_forward(make_case(dtype=dtype, **FEATURES[feature]))


@pytest.mark.parametrize("head_dim", [32, 64, 80, 96, 128, 256, 7])
def test_forward_head_dims(head_dim):
    torch.manual_seed(1)
    check_forward(make_case(head_dim=head_dim, padding=True, seq_q=37, seq_k=45))


def test_forward_float16():
    torch.manual_seed(2)
    check_forward(make_case(dtype=torch.float16, padding=True, bias="broadcast", causal=True, seq_q=20, seq_k=50))


@pytest.mark.parametrize("seq_q,seq_k,causal", [(1, 1, False), (1, 1025, True), (17, 1, False), (1025, 97, True),
                                                (97, 1025, False)])
def test_forward_lengths(seq_q, seq_k, causal):
    torch.manual_seed(3)
    check_forward(make_case(batch=1, heads=2, seq_q=seq_q, seq_k=seq_k, causal=causal, padding=seq_k > 1))


# One query row, KV-cache decoding's shape: the kernel computes its scores as one dot product per key instead of the
# tile GEMM. Every score term and mask still applies, in every dtype, with key counts past one 128-key tile and not a
# multiple of the 4 keys it takes at once, and head dims that are no multiple of the vector width.
SINGLE_QUERY = {
    "causal_random_mask": dict(seq_k=131, causal=True, padding="random"),
    "gqa_bias": dict(heads=6, kv_heads=2, seq_k=300, bias="full", causal=True),
    "t5_causal": dict(seq_k=70, t5="causal", causal=True),
    "head_dim_7": dict(head_dim=7, seq_k=9),
    "head_dim_80_padding": dict(head_dim=80, seq_k=133, padding=True),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("feature", SINGLE_QUERY)
def test_forward_single_query_row(feature, dtype):
    torch.manual_seed(5)
    check_forward(make_case(dtype=dtype, seq_q=1, **SINGLE_QUERY[feature]))


def test_single_query_row_from_a_kv_cache():
    """Decoding's views: q from a fused [B, 1, 3, H, D] projection, k and v the written slots of [B, H, 200, D]
    cache buffers (row strides 3 * H * D and 200 * D)."""
    torch.manual_seed(6)
    qkv = torch.randn(2, 1, 3, 4, 64)  # [B, 1, 3, H, D]
    keys, values = torch.randn(2, 4, 200, 64), torch.randn(2, 4, 200, 64)  # [B, H, max_length, D]
    case = make_case(batch=2, heads=4, seq_q=1, seq_k=77, causal=True, padding=True)
    case.update(q=qkv[:, :, 0].transpose(1, 2), k=keys[:, :, :77], v=values[:, :, :77])
    check_forward(case)


def test_fully_masked_rows_give_zero_and_inf_lse():
    torch.manual_seed(4)
    case = make_case(batch=3, seq_q=40, seq_k=24, causal=True, bias="broadcast", padding=True)
    case["key_padding_mask"][1] = False  # batch 1 keeps no key at all
    out, lse = check_forward(case)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert torch.isinf(lse[1]).all() and (lse[1] > 0).all()
    assert torch.equal(out[0, :, :16], torch.zeros_like(out[0, :, :16]))  # causal: query i keeps keys <= i - 16
    assert torch.isinf(lse[0, :, :16]).all()
    grads = run_bwd(case, torch.randn_like(out), out, lse, bias_needs_grad=True)
    for grad in grads[:4]:
        assert not torch.isnan(grad).any()
    assert torch.equal(grads[0][1], torch.zeros_like(grads[0][1]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_strided_fused_qkv_views(dtype):
    """q, k, v as views of one fused [B, S, 3, H, D] projection give the same bits as contiguous copies."""
    torch.manual_seed(5)
    case = make_case(dtype=dtype, seq_q=50, fused_qkv=True, padding=True, bias="broadcast")
    assert not case["q"].is_contiguous()
    out, lse = check_forward(case)
    contiguous = dict(case, q=case["q"].contiguous(), k=case["k"].contiguous(), v=case["v"].contiguous())
    out_c, lse_c = run_fwd(contiguous)
    assert torch.equal(out, out_c) and torch.equal(lse, lse_c)
    grad_out = torch.randn_like(out).transpose(1, 2).contiguous().transpose(1, 2)  # strided too
    assert all(torch.equal(a, b) for a, b in zip(run_bwd(case, grad_out, out, lse, True),
                                                 run_bwd(contiguous, grad_out.contiguous(), out, lse, True)))


# ---- backward --------------------------------------------------------------------------------------------------

def reference_grads(case, grad_out, dtype=torch.float64, keep=None):
    """Autograd of the reference in `dtype`: (dq, dk, dv, d expanded attn_bias or None, d rel_table or None)."""
    ref_case = dict(case)
    for name in ("q", "k", "v", "attn_bias", "rel_table"):
        if case[name] is not None:
            ref_case[name] = case[name].detach().to(dtype).requires_grad_()
    out, _ = run_reference(ref_case, dtype=dtype, keep=keep)
    names = [name for name in ("q", "k", "v", "attn_bias", "rel_table") if case[name] is not None]
    grads = dict(zip(names, torch.autograd.grad(out, [ref_case[n] for n in names], grad_out.to(dtype))))
    return tuple(grads.get(name) for name in ("q", "k", "v", "attn_bias", "rel_table"))


GRAD_NAMES = ("grad_q", "grad_k", "grad_v", "grad_bias", "grad_rel_table")


def check_backward(case, keep=None):
    out, lse = run_fwd(case)
    grad_out = torch.randn_like(out)
    grads = run_bwd(case, grad_out, out, lse, bias_needs_grad=case["attn_bias"] is not None)
    expected = reference_grads(case, grad_out, keep=keep)
    same_dtype = reference_grads(case, grad_out, dtype=case["q"].dtype, keep=keep)
    for name, got, want, same in zip(GRAD_NAMES, grads, expected, same_dtype):
        if want is None:
            assert got.numel() == 0, f"{name} should be empty"
            continue
        assert got.shape == want.shape, name
        atol = ATOL[case["q"].dtype]
        if name == "grad_rel_table":  # each entry sums dS over thousands of pairs: the slack is relative to its size
            atol *= max(1.0, want.abs().max().item())
        assert_error_within_budget(got, want, same, atol, name)


BACKWARD_CASES = {
    "padding": dict(padding=True, seq_q=70, seq_k=150),
    "decode_long": dict(seq_q=1, seq_k=1025, causal=True, padding=True),
    "random_mask": dict(seq_q=20, seq_k=150, padding="random"),
    "causal_cross_gqa": dict(group=2, seq_q=40, seq_k=140, causal=True),
    "bias_t5_padding": dict(seq_q=50, seq_k=130, bias="broadcast", t5="bidirectional", padding=True),
    "t5_causal_full_bias": dict(seq_q=70, seq_k=70, t5="causal", causal=True, bias="full",
                                bias_dtype=torch.float32),
}
# With 1 thread the backward is "fused" (one task per (b, kv head)) when B * Hkv >= 4, else "split" in two passes.
WORK_SPLITS = {"fused": dict(batch=2, kv_heads=2), "split": dict(batch=1, kv_heads=1)}


@pytest.mark.parametrize("split", WORK_SPLITS)
@pytest.mark.parametrize("feature", BACKWARD_CASES)
def test_backward_matches_reference(feature, split):
    torch.manual_seed(6)
    params = dict(BACKWARD_CASES[feature], **WORK_SPLITS[split])
    params["heads"] = params["kv_heads"] * params.pop("group", 1)
    with intra_op_threads(1):
        check_backward(make_case(**params))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_backward_reduced_precision(dtype):
    torch.manual_seed(7)
    with intra_op_threads(2):
        check_backward(make_case(dtype=dtype, heads=4, kv_heads=2, seq_q=40, seq_k=90, padding=True,
                                 bias="broadcast", bias_dtype=torch.float32, t5="bidirectional", causal=True))


class _Attention(torch.autograd.Function):
    """The two ops as an autograd function, for gradcheck (the public op lives in fastformer/ops)."""

    @staticmethod
    def forward(ctx, q, k, v, bias_leaf, rel_table, case):
        case = dict(case, q=q, k=k, v=v, rel_table=rel_table,
                    attn_bias=None if bias_leaf is None else bias_leaf.expand(*q.shape[:3], k.shape[2]))
        out, lse = run_fwd(case)
        ctx.case = case
        ctx.save_for_backward(out, lse)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        out, lse = ctx.saved_tensors
        case = ctx.case
        grad_q, grad_k, grad_v, grad_bias, grad_table = run_bwd(case, grad_out, out, lse,
                                                                case["attn_bias"] is not None)
        if case["attn_bias"] is not None:  # reduce the expanded bias's gradient to the leaf's broadcast shape
            grad_bias = grad_bias.sum(dim=1, keepdim=True)
        return (grad_q, grad_k, grad_v, grad_bias if case["attn_bias"] is not None else None,
                grad_table if case["rel_table"] is not None else None, None)


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_gradcheck_fp64(dropout_p):
    torch.manual_seed(8)
    case = make_case(dtype=torch.float64, batch=2, heads=4, kv_heads=2, seq_q=9, seq_k=13, head_dim=8,
                     padding=True, causal=True, bias="broadcast", t5="bidirectional")
    case.update(dropout_p=dropout_p, seed=1234)
    inputs = [case[name].requires_grad_() for name in ("q", "k", "v", "bias_leaf", "rel_table")]
    assert torch.autograd.gradcheck(lambda *xs: _Attention.apply(*xs, case), inputs)


# ---- dropout ---------------------------------------------------------------------------------------------------

def triton_rand(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """tl.rand(seed, offsets) for int64 offsets: on the GPU if there is one, else in Triton's interpreter."""
    triton = pytest.importorskip("triton")
    import triton.language as tl

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and type(tl.rand).__name__ != "InterpretedFunction":
        pytest.skip("Triton was imported before TRITON_INTERPRET=1 was set, so tl.rand cannot run on the CPU")

    @triton.jit
    def rand_kernel(out_ptr, offsets_ptr, seed, n, BLOCK: tl.constexpr):
        index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        in_range = index < n
        offs = tl.load(offsets_ptr + index, mask=in_range, other=0)
        tl.store(out_ptr + index, tl.rand(seed, offs), mask=in_range)

    offsets = offsets.to(device)
    out = torch.empty(offsets.shape, dtype=torch.float32, device=device)
    block = 1024
    rand_kernel[(triton.cdiv(offsets.numel(), block),)](out, offsets, seed, offsets.numel(), BLOCK=block)
    return out.cpu()


def philox_offsets(batch, heads, seq_q, seq_k) -> torch.Tensor:
    """int64 [B, H, Sq, Sk]: ((b * H + h) * Sq + i) * Sk + j."""
    return torch.arange(batch * heads * seq_q * seq_k, dtype=torch.int64).view(batch, heads, seq_q, seq_k)


@pytest.mark.parametrize("seed", [0, 1234567, 2**40 + 17])
def test_dropout_mask_is_triton_rand(seed):
    """With v = identity (D = Sk) each output row is that row's dropped-out probabilities, so its zeros are
    exactly the dropped elements; they must be those where tl.rand(seed, offset) < p."""
    torch.manual_seed(9)
    batch, heads, seq_q, seq_k, p = 2, 3, 40, 64, 0.4
    case = make_case(batch=batch, heads=heads, seq_q=seq_q, seq_k=seq_k, head_dim=seq_k)
    case.update(v=torch.eye(seq_k).expand(batch, heads, seq_k, seq_k), dropout_p=p, seed=seed)
    out, _ = run_fwd(case)
    keep = triton_rand(seed, philox_offsets(batch, heads, seq_q, seq_k)) >= p
    assert torch.equal(out != 0, keep)


def test_dropout_forward_backward_match_reference():
    torch.manual_seed(10)
    case = make_case(heads=4, kv_heads=2, seq_q=30, seq_k=70, padding=True, bias="broadcast", causal=True)
    case.update(dropout_p=0.25, seed=77)
    keep = triton_rand(77, philox_offsets(2, 4, 30, 70)) >= 0.25
    with intra_op_threads(1):
        check_forward(case, keep=keep)
        check_backward(case, keep=keep)


def test_dropout_p_one_drops_everything():
    torch.manual_seed(11)
    case = make_case(seq_q=5, seq_k=7)
    case.update(dropout_p=1.0)
    out, lse = run_fwd(case)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isfinite(lse).all()


# ---- argument checks -------------------------------------------------------------------------------------------

def _bad(**changes):
    torch.manual_seed(12)
    case = make_case(batch=2, heads=4, seq_q=8, seq_k=8, head_dim=16, padding=True, t5="bidirectional",
                     bias="broadcast")
    case.update(changes)
    return case


# expected message -> bad arguments (changes to a valid case)
BAD_FORWARD_ARGS = {
    "q must be 4-D": lambda: dict(q=torch.randn(4, 8, 16)),
    "k and v must have the dtype of q": lambda: dict(k=torch.randn(2, 4, 8, 16, dtype=torch.float64)),
    "q must have a contiguous last dimension": lambda: dict(q=torch.randn(2, 4, 16, 8).transpose(2, 3)),
    "must be a multiple of the number of kv heads": lambda: dict(k=torch.randn(2, 3, 8, 16),
                                                                 v=torch.randn(2, 3, 8, 16)),
    "v must have the shape of k": lambda: dict(v=torch.randn(2, 4, 9, 16)),
    "q must be float32, float64, bfloat16 or float16": lambda: dict(q=torch.randint(0, 5, (2, 4, 8, 16))),
    "attn_bias must be expanded to": lambda: dict(attn_bias=torch.randn(2, 4, 8, 7)),
    "attn_bias must have the dtype of q": lambda: dict(attn_bias=torch.randn(2, 4, 8, 8, dtype=torch.float64)),
    "key_padding_mask must be bool": lambda: dict(key_padding_mask=torch.ones(2, 8)),
    "key_padding_mask must have shape": lambda: dict(key_padding_mask=torch.ones(2, 9, dtype=torch.bool)),
    "rel_table and rel_lut must be given together": lambda: dict(rel_lut=None),
    "rel_lut must be int32": lambda: dict(rel_lut=t5_lut(32, 20, True).long()),
    "is not a valid bucket": lambda: dict(rel_lut=torch.tensor([0, 16], dtype=torch.int32)),
    "rel_table must have shape": lambda: dict(rel_table=torch.randn(32, 3)),
    "dropout_p must be in": lambda: dict(dropout_p=1.5),
}


@pytest.mark.parametrize("message", BAD_FORWARD_ARGS)
def test_forward_rejects_bad_arguments(message):
    with pytest.raises(RuntimeError, match=message):
        run_fwd(_bad(**BAD_FORWARD_ARGS[message]()))


def test_backward_rejects_bad_arguments():
    case = _bad()
    out, lse = run_fwd(case)
    grad_out = torch.randn_like(out)
    with pytest.raises(RuntimeError, match="lse must be float32"):
        run_bwd(case, grad_out, out, lse.double(), True)
    with pytest.raises(RuntimeError, match="grad_out must have the shape of q"):
        run_bwd(case, grad_out[:, :, :4], out, lse, True)
    with pytest.raises(RuntimeError, match="bias_needs_grad requires attn_bias"):
        run_bwd(dict(case, attn_bias=None), grad_out, out, lse, True)
