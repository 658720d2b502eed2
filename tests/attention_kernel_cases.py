"""Cases, inputs and a materialized reference for the kernel tests of torch.ops.fastformer.attention_fwd
(tests/ops/test_attention_cuda.py on a GPU, tests/ops/test_attention_cuda_emu.py under the emulator).

attention_reference follows the schema comment in csrc/fastformer.cpp literally: it builds the full
[B, H, Sq, Sk] score matrix, so keep shapes small. Dropout keeps element (b, h, i, j) iff Triton's
tl.rand(seed, ((b*H + h)*Sq + i)*Sk + j) >= p, taken from tl.rand itself (interpreted on CPU when
TRITON_INTERPRET=1, compiled on a GPU), so the reference does not depend on any port of Philox.
"""
from dataclasses import dataclass

import pytest
import torch

from tests.tolerance import assert_as_accurate

try:
    import triton
    import triton.language as tl
except ImportError:  # dropout cases skip without Triton
    triton = None

# lse is an fp32 log of fp32 sums of exactly rounded inputs: its error is ~1e-6; this leaves room.
LSE_ATOL = 1e-3


@dataclass
class AttentionCase:
    batch: int = 2
    heads: int = 2
    kv_heads: int = 2
    seqlen_q: int = 17
    seqlen_k: int = 70
    head_dim: int = 64
    bias: str | None = None  # None, "full" ([B, H, Sq, Sk]), "broadcast" ([1, H, 1, Sk] expanded), "fp32"
    padding: bool = False    # key_padding_mask with some keys dropped, and one batch fully masked
    causal: bool = False
    t5: str | None = None    # None, "bidirectional", "causal"
    dropout_p: float = 0.0
    layout: str = "contiguous"  # "contiguous", "fused_qkv" (views of one [B, S, 3, H, D] tensor), "odd_offset"

    def id(self) -> str:
        parts = [f"b{self.batch}h{self.heads}kv{self.kv_heads}q{self.seqlen_q}k{self.seqlen_k}d{self.head_dim}"]
        for name in ("bias", "t5", "layout"):
            value = getattr(self, name)
            if value and value != "contiguous":
                parts.append(f"{name}={value}")
        parts += [flag for flag in ("padding", "causal") if getattr(self, flag)]
        if self.dropout_p:
            parts.append(f"dropout{self.dropout_p}")
        return "-".join(parts)


def _qkv(case: AttentionCase, dtype, device, generator):
    B, H, Hkv, Sq, Sk, D = case.batch, case.heads, case.kv_heads, case.seqlen_q, case.seqlen_k, case.head_dim

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(dtype=dtype, device=device)

    if case.layout == "fused_qkv":
        # q, k, v as strided views of one projection output: no copy, row stride 3*H*D.
        assert Sq == Sk and H == Hkv, "fused_qkv needs self-attention shapes"
        qkv = randn(B, Sq, 3, H, D)  # [B, S, 3, H, D]
        q, k, v = (qkv[:, :, n].transpose(1, 2) for n in range(3))  # each [B, H, S, D]
        return q, k, v
    if case.layout == "odd_offset":
        # Storage offset of one element: no 16-byte alignment, so the kernels load element by element.
        def shifted(*shape):
            flat = randn(int(torch.tensor(shape).prod()) + 1)
            return flat[1:].view(*shape)
        return shifted(B, H, Sq, D), shifted(B, Hkv, Sk, D), shifted(B, Hkv, Sk, D)
    return randn(B, H, Sq, D), randn(B, Hkv, Sk, D), randn(B, Hkv, Sk, D)


def make_inputs(case: AttentionCase, dtype, device, seed: int = 0) -> dict:
    """Keyword arguments of torch.ops.fastformer.attention_fwd for `case`, fresh random data."""
    g = torch.Generator().manual_seed(seed)
    B, H, Sq, Sk, D = case.batch, case.heads, case.seqlen_q, case.seqlen_k, case.head_dim
    q, k, v = _qkv(case, dtype, device, g)
    bias = None
    if case.bias == "full":
        bias = torch.randn(B, H, Sq, Sk, generator=g).to(dtype=dtype, device=device)
    elif case.bias == "broadcast":
        bias = torch.randn(1, H, 1, Sk, generator=g).to(dtype=dtype, device=device).expand(B, H, Sq, Sk)
    elif case.bias == "fp32":
        bias = torch.randn(B, 1, Sq, Sk, generator=g).to(device=device).expand(B, H, Sq, Sk)
    mask = None
    if case.padding:
        mask = torch.rand(B, Sk, generator=g) > 0.3  # [B, Sk], True = attend
        mask[0, :] = False  # batch 0: every row fully masked
        mask = mask.to(device)
    rel_table = rel_lut = None
    if case.t5:
        num_buckets = 8
        rel_table = torch.randn(num_buckets, H, generator=g).to(device=device)  # [num_buckets, H]
        # Buckets grow with distance (exact for small, log-ish beyond), as T5's LUT does.
        half = num_buckets // 2 if case.t5 == "bidirectional" else num_buckets
        rel_lut = torch.tensor([min(n if n < half // 2 else half // 2 + (n - half // 2) // 3, half - 1)
                                for n in range(12)], dtype=torch.int32, device=device)
    return dict(q=q, k=k, v=v, attn_bias=bias, key_padding_mask=mask, rel_table=rel_table, rel_lut=rel_lut,
                rel_bidirectional=case.t5 == "bidirectional", causal=case.causal, scale=D ** -0.5,
                dropout_p=case.dropout_p, seed=1234 + seed)


if triton is not None:
    @triton.jit
    def _uniform_kernel(out_ptr, seed, count, BLOCK: tl.constexpr):
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        tl.store(out_ptr + offsets, tl.rand(seed, offsets), mask=offsets < count)


def triton_uniform(seed: int, count: int, device) -> torch.Tensor:
    """tl.rand(seed, arange(count)) as float32 [count]."""
    if triton is None:
        pytest.skip("dropout reference needs Triton's tl.rand (triton not importable)")
    out = torch.empty(count, dtype=torch.float32, device=device)
    block = 1024
    _uniform_kernel[(triton.cdiv(count, block),)](out, seed, count, BLOCK=block)
    return out


def attention_reference(q, k, v, attn_bias=None, key_padding_mask=None, rel_table=None, rel_lut=None,
                        rel_bidirectional=False, causal=False, scale=1.0, dropout_p=0.0, seed=0,
                        compute_dtype=torch.float64):
    """(out [B, H, Sq, D] in compute_dtype, lse [B, H, Sq] float64 with +inf for fully masked rows)."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    device = q.device
    qc, kc, vc = (t.to(compute_dtype) for t in (q, k, v))
    kc = kc.repeat_interleave(H // Hkv, dim=1)  # [B, H, Sk, D]
    vc = vc.repeat_interleave(H // Hkv, dim=1)
    scores = scale * (qc @ kc.transpose(-1, -2))  # [B, H, Sq, Sk]
    if attn_bias is not None:
        scores = scores + attn_bias.to(compute_dtype)
    i = torch.arange(Sq, device=device)[:, None]
    j = torch.arange(Sk, device=device)[None, :]
    rel = j - (i + Sk - Sq)  # [Sq, Sk]
    if rel_table is not None:
        distance = rel.abs() if rel_bidirectional else (-rel).clamp(min=0)
        bucket = rel_lut.long()[distance.clamp(max=rel_lut.numel() - 1)]
        if rel_bidirectional:
            bucket = bucket + (rel > 0).long() * (rel_table.shape[0] // 2)
        scores = scores + rel_table.to(compute_dtype)[bucket].permute(2, 0, 1)[None]  # [1, H, Sq, Sk]
    keep = torch.ones(B, 1, Sq, Sk, dtype=torch.bool, device=device)
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    if causal:
        keep = keep & (rel <= 0)
    scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores.double(), dim=-1)  # [B, H, Sq]
    lse = torch.where(torch.isneginf(lse), torch.full_like(lse, float("inf")), lse)
    probs = torch.exp(scores.double() - lse[..., None]).to(compute_dtype)  # fully masked rows: exp(-inf) = 0
    if dropout_p > 0:
        uniform = triton_uniform(seed, B * H * Sq * Sk, device).view(B, H, Sq, Sk)
        kept = uniform >= torch.tensor(dropout_p, dtype=torch.float32)
        probs = torch.where(kept, probs / (1 - dropout_p), torch.zeros_like(probs))
    return probs @ vc, lse


def check_against_reference(out, lse, inputs):
    """out within 2x the same-dtype PyTorch error of the fp64 reference; lse close, +inf exactly where
    a row keeps no key."""
    dtype = inputs["q"].dtype
    ref_out, ref_lse = attention_reference(**inputs)
    same_dtype_out, _ = attention_reference(**inputs, compute_dtype=dtype)
    assert_as_accurate(out.cpu(), same_dtype_out.cpu(), ref_out.cpu(), dtype, name="out")
    lse, ref_lse = lse.cpu().double(), ref_lse.cpu()
    assert torch.equal(torch.isinf(lse), torch.isinf(ref_lse)), "lse is +inf on other rows than the reference"
    assert (lse[lse.isinf()] > 0).all(), "lse of a fully masked row must be +inf"
    finite = ~torch.isinf(ref_lse)
    assert torch.allclose(lse[finite], ref_lse[finite], atol=LSE_ATOL, rtol=LSE_ATOL), "lse differs"


C = AttentionCase
HEAD_DIMS = [32, 64, 80, 96, 128, 256]
HALF = [torch.float16, torch.bfloat16]


def _cases(head_dim_cases, feature_cases, combined_case, dtypes):
    """Head-dim and combined cases in every dtype; single-feature cases in the first dtype only."""
    return ([pytest.param(c, dt, id=f"{c.id()}-{dt}") for c in head_dim_cases + [combined_case] for dt in dtypes]
            + [pytest.param(c, dtypes[0], id=f"{c.id()}-{dtypes[0]}") for c in feature_cases])


# Tensor-core kernel: fp16/bf16 with Sq > 4. Sk = 70 is no multiple of the 32/64-key tiles; Sq = 130
# spans two or three query tiles (128 / 64 rows) with a ragged last one; causal 65 x 65 needs key 64,
# the first of a second key tile, for the last row only.
PREFILL_CASES = _cases(
    [C(seqlen_q=130, seqlen_k=70, head_dim=d) for d in HEAD_DIMS],
    [C(seqlen_q=17, seqlen_k=70, bias="full"), C(seqlen_q=17, seqlen_k=70, bias="broadcast"),
     C(seqlen_q=17, seqlen_k=70, bias="fp32"), C(seqlen_q=17, seqlen_k=70, padding=True),
     C(seqlen_q=17, seqlen_k=70, causal=True), C(seqlen_q=70, seqlen_k=17, causal=True),
     C(seqlen_q=65, seqlen_k=65, causal=True), C(seqlen_q=130, seqlen_k=130, causal=True, head_dim=128),
     C(seqlen_q=17, seqlen_k=70, t5="bidirectional"), C(seqlen_q=70, seqlen_k=70, t5="causal", causal=True),
     C(seqlen_q=17, seqlen_k=70, dropout_p=0.3), C(heads=4, kv_heads=2, seqlen_q=17, seqlen_k=70),
     C(heads=4, kv_heads=1, seqlen_q=17, seqlen_k=70), C(seqlen_q=33, seqlen_k=33, layout="fused_qkv", head_dim=80),
     C(seqlen_q=17, seqlen_k=70, layout="odd_offset"),
     C(seqlen_q=1025, seqlen_k=80, batch=1, heads=1, kv_heads=1, causal=True)],
    C(heads=4, kv_heads=2, seqlen_q=40, seqlen_k=70, bias="broadcast", padding=True, causal=True,
      t5="bidirectional", dropout_p=0.2, head_dim=96),
    HALF)
# Split-KV kernel: Sq <= 4 in every dtype. Sk = 300 gives 2 chunks of 160 keys (the emulator runs a
# warp shuffle per key and row, so long Sk is slow here).
SPLIT_CASES = _cases(
    [C(seqlen_q=1, seqlen_k=70, head_dim=d) for d in HEAD_DIMS],
    [C(seqlen_q=4, seqlen_k=300, causal=True), C(seqlen_q=1, seqlen_k=70, bias="full"),
     C(seqlen_q=3, seqlen_k=70, bias="fp32"), C(seqlen_q=1, seqlen_k=300, padding=True),
     C(seqlen_q=3, seqlen_k=300, t5="bidirectional"), C(seqlen_q=2, seqlen_k=300, t5="causal", causal=True),
     C(seqlen_q=3, seqlen_k=300, dropout_p=0.3), C(heads=4, kv_heads=1, seqlen_q=1, seqlen_k=300),
     C(seqlen_q=3, seqlen_k=70, layout="odd_offset", head_dim=80)],
    C(heads=2, kv_heads=1, seqlen_q=4, seqlen_k=300, bias="broadcast", padding=True, causal=True,
      t5="bidirectional", dropout_p=0.2, head_dim=128),
    HALF + [torch.float32])
# fp32 takes the split-KV kernel at any Sq (several 4-row query blocks per CTA grid).
FP32_CASES = [C(seqlen_q=17, seqlen_k=70, head_dim=d) for d in (32, 80, 256)] + [
    C(seqlen_q=70, seqlen_k=17, causal=True, padding=True, bias="full"),
    C(seqlen_q=5, seqlen_k=300, t5="bidirectional", dropout_p=0.3)]

# (message regex, corruption of make_inputs(C(seqlen_q=17, seqlen_k=70), fp16, device)): each makes the
# op raise a RuntimeError whose message names the argument.
BAD_INPUTS = [
    (r"head dim must be", lambda i: i.update(q=i["q"][..., :48], k=i["k"][..., :48], v=i["v"][..., :48])),
    ("k and v must have q's dtype", lambda i: i.update(k=i["k"].float())),
    ("must be a multiple of k's heads", lambda i: i.update(q=torch.cat([i["q"], i["q"][:, :1]], dim=1))),
    ("contiguous last dim", lambda i: i.update(q=i["q"].transpose(2, 3).contiguous().transpose(2, 3))),
    ("attn_bias must be expanded", lambda i: i.update(attn_bias=torch.zeros(2, 2, 17, device=i["q"].device))),
    ("attn_bias must have q's dtype", lambda i: i.update(
        attn_bias=torch.zeros(2, 2, 17, 70, device=i["q"].device, dtype=torch.float64))),
    ("key_padding_mask must be bool", lambda i: i.update(key_padding_mask=torch.ones(2, 70, device=i["q"].device))),
    (r"key_padding_mask must be \[B, Sk\]", lambda i: i.update(
        key_padding_mask=torch.ones(2, 71, device=i["q"].device, dtype=torch.bool))),
    ("rel_table and rel_lut must be given together", lambda i: i.update(rel_table=torch.zeros(8, 2, device=i["q"].device))),
    (r"dropout_p must be in \[0, 1\]", lambda i: i.update(dropout_p=1.5)),
]


def check_no_keys_and_no_queries(run, device):
    """run(inputs) -> (out, lse): Sk = 0 gives out = 0 and lse = +inf; Sq = 0 gives empty outputs."""
    inputs = make_inputs(C(seqlen_q=5, seqlen_k=8), torch.float16, device)
    inputs["k"], inputs["v"] = inputs["k"][:, :, :0], inputs["v"][:, :, :0]
    out, lse = run(inputs)
    assert out.shape == (2, 2, 5, 64) and (out == 0).all() and torch.isposinf(lse).all()
    inputs = make_inputs(C(seqlen_q=5, seqlen_k=8), torch.float16, device)
    inputs["q"] = inputs["q"][:, :, :0]
    out, lse = run(inputs)
    assert out.shape == (2, 2, 0, 64) and lse.shape == (2, 2, 0)
