"""ff.ops.decode_block (one pre-norm block for one token against its KV cache, CPU fp32 / bf16) against its fp64
reference, its cache writes, torch.library.opcheck, and its argument errors. The model-level check (the fused step
equals the Python block's exactly, through generation) is in tests/models/test_gpt2.py."""
import pytest
import torch

import fastformer as ff
from fastformer.ops.decode_block import AVAILABLE

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this build of fastformer._C has no decode_block (rebuild)")

HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE, MAX_LENGTH = 96, 3, 32, 200, 41


def make_args(length=7, rms=False, activation="gelu_tanh", biases=True, padded=False, hidden=HIDDEN, seed=0):
    """Random arguments of decode_block for a cache with `length` tokens written."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape, scale=1.0: torch.randn(*shape, generator=gen) * scale  # noqa: E731
    width = HEADS * HEAD_DIM
    maybe = lambda t: t if biases else None  # noqa: E731
    keys, values = randn(1, HEADS, MAX_LENGTH, HEAD_DIM), randn(1, HEADS, MAX_LENGTH, HEAD_DIM)
    mask = torch.ones(1, length + 1, dtype=torch.bool)
    if padded:
        mask[0, : length // 2] = False  # a left-padded prompt: its padding slots are never attended
    return dict(x=randn(1, hidden), keys=keys, values=values, length=length, key_padding_mask=mask,
                norm1_weight=1 + randn(hidden, scale=0.1), norm1_bias=maybe(randn(hidden, scale=0.1)),
                qkv_weight=randn(3 * width, hidden, scale=hidden ** -0.5), qkv_bias=maybe(randn(3 * width, scale=0.1)),
                out_weight=randn(hidden, width, scale=width ** -0.5), out_bias=maybe(randn(hidden, scale=0.1)),
                norm2_weight=1 + randn(hidden, scale=0.1), norm2_bias=maybe(randn(hidden, scale=0.1)),
                up_weight=randn(INTERMEDIATE, hidden, scale=hidden ** -0.5),
                up_bias=maybe(randn(INTERMEDIATE, scale=0.1)),
                down_weight=randn(hidden, INTERMEDIATE, scale=INTERMEDIATE ** -0.5),
                down_bias=maybe(randn(hidden, scale=0.1)), rms=rms, eps=1e-5, activation=activation,
                scale=HEAD_DIM ** -0.5)


def with_tensors(args, convert):
    return {k: (convert(v) if isinstance(v, torch.Tensor) and v.dtype != torch.bool else v) for k, v in args.items()}


@pytest.mark.parametrize("length", [0, 1, 7, MAX_LENGTH - 1])
@pytest.mark.parametrize("rms, activation, biases, padded", [
    (False, "gelu_tanh", True, False), (False, "gelu", True, True), (True, "silu", False, False),
    (False, "relu", False, True)])
def test_matches_fp64_reference_and_writes_the_cache(length, rms, activation, biases, padded):
    args = make_args(length, rms, activation, biases, padded)
    fp64 = with_tensors(args, lambda t: t.double().clone())
    fp32_ref = with_tensors(args, lambda t: t.clone())
    want = ff.ops.decode_block_ref(**fp64)
    baseline = (ff.ops.decode_block_ref(**fp32_ref).double() - want).abs().max()
    got = ff.ops.decode_block(**args)
    assert got.shape == (1, HIDDEN) and got.dtype == torch.float32
    assert (got.double() - want).abs().max() <= 2 * baseline + 1e-5
    # The token's k and v went into slot `length` and nothing else moved.
    for name in ("keys", "values"):
        torch.testing.assert_close(args[name].double(), fp64[name], atol=1e-5, rtol=1e-5)
        untouched = [s for s in range(MAX_LENGTH) if s != length]
        fresh = make_args(length, rms, activation, biases, padded)[name]
        assert torch.equal(args[name][:, :, untouched], fresh[:, :, untouched])



@pytest.mark.parametrize("rms, activation", [(False, "gelu_tanh"), (True, "silu")])
def test_bf16_is_as_close_to_fp64_as_the_reference_in_bf16(rms, activation):
    """bf16 arguments: the op's error against the fp64 block of the same bf16 values stays within 2x that of the
    reference block computed in bf16 by PyTorch, and the token's k and v go into its slot."""
    args = with_tensors(make_args(9, rms, activation), lambda t: t.bfloat16())
    want = ff.ops.decode_block_ref(**with_tensors(args, lambda t: t.double().clone()))
    baseline = (ff.ops.decode_block_ref(**with_tensors(args, lambda t: t.clone())).double() - want).abs().max()
    keys = args["keys"]
    got = ff.ops.decode_block(**args)
    assert got.dtype == torch.bfloat16 and (got.double() - want).abs().max() <= 2 * baseline + 1e-3
    assert not torch.equal(keys[:, :, 9], make_args(9, rms, activation)["keys"][:, :, 9].bfloat16())

def test_masked_slots_are_not_attended():
    """A masked slot's cached values do not reach the output, whatever they hold."""
    args = make_args(length=9, padded=True)
    first = ff.ops.decode_block(**{**args, "keys": args["keys"].clone(), "values": args["values"].clone()})
    scribbled = {**args, "keys": args["keys"].clone(), "values": args["values"].clone()}
    scribbled["values"][:, :, :4] = 1e4  # slots 0-3 are padding (mask False)
    assert torch.equal(ff.ops.decode_block(**scribbled), first)


def test_opcheck():
    args = make_args(length=5)
    torch.library.opcheck(torch.ops.fastformer.decode_block.default, tuple(args.values()),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("change, error, match", [
    (dict(x=torch.randn(2, HIDDEN)), ValueError, r"x must be one token's row \[1, hidden\]"),
    (dict(x=[[0.0] * HIDDEN]), TypeError, "x must be a torch.Tensor"),
    (dict(x=torch.randn(1, HIDDEN, dtype=torch.float16)), TypeError, "x must be float32 or bfloat16"),
    (dict(length=MAX_LENGTH), ValueError, r"length must be in \[0, 41\)"),
    (dict(key_padding_mask=torch.ones(1, 5, dtype=torch.bool)), ValueError,
     r"key_padding_mask must be \[1, length \+ 1\]"),
    (dict(key_padding_mask=torch.ones(1, 8)), TypeError, "key_padding_mask must be torch.bool"),
    (dict(qkv_weight=torch.randn(3 * HEADS * HEAD_DIM, HIDDEN + 1)), ValueError,
     r"qkv_weight must be \[288, 96\]"),
    (dict(values=torch.randn(1, HEADS, MAX_LENGTH - 1, HEAD_DIM)), ValueError,
     "keys and values must be one row's cache"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(up_weight=torch.randn(INTERMEDIATE, HIDDEN + 1)), ValueError, r"up_weight must be \[200, 96\]"),
    (dict(down_weight=torch.randn(HIDDEN, INTERMEDIATE - 1)), ValueError, r"down_weight must be \[96, 200\]"),
    (dict(out_bias=torch.randn(HIDDEN - 1)), ValueError, r"out_bias must be \[96\]"),
    (dict(norm2_weight=torch.randn(HIDDEN + 2)), ValueError, r"norm2_weight must be \[hidden=96\]"),
    (dict(keys=torch.randn(1, HEADS, HEAD_DIM, MAX_LENGTH).transpose(2, 3),
          values=torch.randn(1, HEADS, HEAD_DIM, MAX_LENGTH).transpose(2, 3)), ValueError, "contiguous last dim"),
    (dict(up_bias=torch.randn(INTERMEDIATE, dtype=torch.float64)), TypeError, "up_bias must be torch.float32"),
    (dict(out_weight="w"), TypeError, "out_weight must be a torch.Tensor"),
])
def test_bad_arguments_name_the_argument(change, error, match):
    with pytest.raises(error, match=match):
        ff.ops.decode_block(**{**make_args(length=7), **change})


def test_refuses_weights_that_require_grad():
    args = make_args()
    args["up_weight"].requires_grad_(True)
    with pytest.raises(ValueError, match="up_weight requires grad: decode_block is inference-only"):
        ff.ops.decode_block(**args)
    with torch.no_grad():
        ff.ops.decode_block(**args)
