"""torch.ops.fastformer.attention_fwd on CUDA tensors (csrc/cuda/attention.*) against the fp64
materialized reference: both kernels (tensor-core prefill for fp16/bf16 with Sq > 4, split-KV for
Sq <= 4 and every fp32 input), every head dim and mask/bias/dropout feature, and shapes that hit tile
edges. The same cases run on the CPU under the emulator in test_attention_cuda_emu.py; here they run
on the real hardware, plus shapes too large to emulate.
"""
import pytest
import torch

from fastformer import _backends
from tests.attention_kernel_cases import (BAD_INPUTS, FP32_CASES, HEAD_DIMS, PREFILL_CASES, SPLIT_CASES,
                                         AttentionCase, check_against_reference, check_no_keys_and_no_queries,
                                         make_inputs)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)"),
]

C = AttentionCase


@pytest.fixture(autouse=True)
def _cuda_kernels_built():
    reason = _backends.why_not("cuda", torch.device("cuda"))
    if reason is not None:
        pytest.skip(f"the cuda backend cannot run here: {reason}")


def run_cuda(inputs):
    out, lse = torch.ops.fastformer.attention_fwd(
        inputs["q"], inputs["k"], inputs["v"], inputs["attn_bias"], inputs["key_padding_mask"], inputs["rel_table"],
        inputs["rel_lut"], inputs["rel_bidirectional"], inputs["causal"], inputs["scale"], inputs["dropout_p"],
        inputs["seed"])
    torch.cuda.synchronize()  # a kernel fault surfaces here, in this test
    assert out.is_contiguous() and out.shape == inputs["q"].shape and out.dtype == inputs["q"].dtype
    assert lse.dtype == torch.float32 and lse.shape == inputs["q"].shape[:3]
    return out, lse


@pytest.mark.parametrize("case, dtype", PREFILL_CASES)
def test_prefill_kernel(case, dtype):
    inputs = make_inputs(case, dtype, "cuda")
    check_against_reference(*run_cuda(inputs), inputs)


@pytest.mark.parametrize("case, dtype", SPLIT_CASES)
def test_split_kv_kernel(case, dtype):
    inputs = make_inputs(case, dtype, "cuda")
    check_against_reference(*run_cuda(inputs), inputs)


@pytest.mark.parametrize("case", FP32_CASES, ids=AttentionCase.id)
def test_fp32(case):
    inputs = make_inputs(case, torch.float32, "cuda")
    check_against_reference(*run_cuda(inputs), inputs)


# Larger than the emulator can run: many query and key tiles, long decode (many splits), many heads.
LARGE_CASES = (
    [pytest.param(C(seqlen_q=1025, seqlen_k=1025, head_dim=d, causal=causal), dt, id=f"q1025-d{d}-{dt}-causal{causal}")
     for d in HEAD_DIMS for dt in (torch.float16, torch.bfloat16) for causal in (False, True)]
    + [pytest.param(C(batch=1, heads=8, kv_heads=2, seqlen_q=q, seqlen_k=32768, head_dim=128, causal=True), dt,
                    id=f"decode-q{q}-k32768-{dt}") for q in (1, 3) for dt in (torch.float16, torch.float32)]
    + [pytest.param(C(batch=64, heads=16, seqlen_q=1, seqlen_k=513, head_dim=64, padding=True), torch.bfloat16,
                    id="decode-b64h16"),
       pytest.param(C(batch=8, heads=12, seqlen_q=384, seqlen_k=384, head_dim=64, padding=True, bias="broadcast"),
                    torch.float16, id="bert-padded"),
       pytest.param(C(batch=2, heads=8, seqlen_q=512, seqlen_k=512, head_dim=64, t5="bidirectional",
                      dropout_p=0.1), torch.bfloat16, id="t5-encoder-dropout"),
       pytest.param(C(batch=2, heads=4, seqlen_q=300, seqlen_k=300, head_dim=128, layout="fused_qkv", causal=True),
                    torch.float16, id="fused-qkv-causal"),
       pytest.param(C(batch=2, heads=4, seqlen_q=200, seqlen_k=700, layout="odd_offset", head_dim=96), torch.float16,
                    id="unaligned"),
       pytest.param(C(batch=2, heads=4, seqlen_q=300, seqlen_k=1000, head_dim=64, causal=True), torch.float32,
                    id="fp32-prefill")])


@pytest.mark.parametrize("case, dtype", LARGE_CASES)
def test_large_shapes(case, dtype):
    inputs = make_inputs(case, dtype, "cuda")
    check_against_reference(*run_cuda(inputs), inputs)


def test_no_keys_and_no_queries():
    check_no_keys_and_no_queries(run_cuda, "cuda")


def test_same_seed_same_dropout_and_other_seed_differs():
    inputs = make_inputs(C(seqlen_q=64, seqlen_k=64, dropout_p=0.5), torch.float16, "cuda")
    first, _ = run_cuda(inputs)
    again, _ = run_cuda(inputs)
    assert torch.equal(first, again)
    inputs["seed"] += 1
    other, _ = run_cuda(inputs)
    assert not torch.equal(first, other)


def test_runs_on_a_side_stream():
    inputs = make_inputs(C(seqlen_q=130, seqlen_k=70), torch.float16, "cuda")
    stream = torch.cuda.Stream()
    # The inputs were copied and cast on the default stream; a fresh stream does not wait for it.
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out, lse = run_cuda(inputs)
    check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("message, corrupt", BAD_INPUTS, ids=[m for m, _ in BAD_INPUTS])
def test_bad_input_raises_naming_it(message, corrupt):
    inputs = make_inputs(C(seqlen_q=17, seqlen_k=70), torch.float16, "cuda")
    corrupt(inputs)
    with pytest.raises(RuntimeError, match=message):
        run_cuda(inputs)
