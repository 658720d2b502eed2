"""ff.ops.encoder_block (one post-norm encoder block, CPU inference, dense or packed) against its fp64 reference,
with plain and oneDNN-packed weights, torch.library.opcheck, and its argument errors; encoder_blocks (a stack of
blocks in one call) against encoder_block on each block in turn. The model-level check (the fused
blocks equal the Python blocks exactly) is in tests/models/test_encoders.py."""
import pytest
import torch

import fastformer as ff
from fastformer.ops._block_args import ACTIVATIONS
from fastformer.ops.encoder_block import AVAILABLE, LINEARS, encoder_blocks_checked

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="this build of fastformer._C has no encoder_block (rebuild)")

HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE = 80, 4, 20, 123


def make_args(lengths=(5, 9, 1), packed=False, activation="gelu", biases=True, int8=(), seed=0):
    """Random arguments for a batch of sequences of `lengths` tokens: packed, or right-padded with a mask. The
    linears named in int8 get int8 weights with per-channel scales (as ff.nn.Int8Linear quantizes them)."""
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape, scale=1.0: torch.randn(*shape, generator=gen) * scale  # noqa: E731
    width = HEADS * HEAD_DIM
    batch, seq = len(lengths), max(lengths)
    mask = torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]  # [B, S]
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(lengths).cumsum(0)
    x = randn(batch, seq, HIDDEN)
    shapes = {"qkv": (3 * width, HIDDEN), "out": (HIDDEN, width), "up": (INTERMEDIATE, HIDDEN),
              "down": (HIDDEN, INTERMEDIATE)}
    weights, bias_list, scales = [], [], []
    for name in LINEARS:
        weight = randn(*shapes[name], scale=shapes[name][1] ** -0.5)
        scale = None
        if name in int8:
            scale = weight.abs().amax(1) / 127  # [N], per output channel, symmetric
            weight = torch.round(weight / scale[:, None]).to(torch.int8)
        weights.append(weight)
        bias_list.append(randn(shapes[name][0], scale=0.1) if biases else None)
        scales.append(scale)
    return dict(x=x[mask] if packed else x, key_padding_mask=None if packed else mask,
                cu_seqlens=cu_seqlens if packed else None, max_seqlen=seq if packed else 0, heads=HEADS,
                weights=weights, biases=bias_list, weight_scales=scales, int8_max_crest=16.0,
                norm1_weight=1 + randn(HIDDEN, scale=0.1), norm1_bias=randn(HIDDEN, scale=0.1) if biases else None,
                norm2_weight=1 + randn(HIDDEN, scale=0.1), norm2_bias=randn(HIDDEN, scale=0.1) if biases else None,
                activation=activation, eps=1e-12, scale=HEAD_DIM ** -0.5)


def as_fp64(args):
    def convert(v):
        if isinstance(v, list):
            return [convert(t) for t in v]
        return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
    return {k: convert(v) for k, v in args.items()}


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("biases", [True, False], ids=["biases", "no-biases"])
def test_matches_fp64_reference(packed, activation, biases):
    args = make_args(packed=packed, activation=activation, biases=biases)
    want = ff.ops.encoder_block_ref(**as_fp64(args))
    baseline = (ff.ops.encoder_block_ref(**args).double() - want).abs()
    got = ff.ops.encoder_block(**args)
    assert got.shape == args["x"].shape and got.dtype == torch.float32
    real = args["key_padding_mask"] if not packed else slice(None)  # padded rows' outputs are never read
    assert (got.double() - want)[real].abs().max() <= 2 * baseline[real].max() + 1e-5


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("int8", [LINEARS, ("qkv", "down")], ids=["all-int8", "mixed"])
def test_int8_linears_match_the_reference(packed, int8):
    """Linears with weight scales run ff.nn.Int8Linear's product (rows quantized per row, an int32 product): the
    same quantization as the reference's, so only fp32 rounding differs."""
    args = make_args(packed=packed, int8=int8)
    got, want = ff.ops.encoder_block(**args), ff.ops.encoder_block_ref(**args)
    real = args["key_padding_mask"] if not packed else slice(None)
    torch.testing.assert_close(got[real], want[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_packed_weights_give_the_plain_weights_result(packed):
    """ff.nn.Linear hands the op its oneDNN-packed weights; they compute what the plain ones do."""
    args = make_args(packed=packed)
    packed_weights = [torch.ops.mkldnn._reorder_linear_weight(w) for w in args["weights"]]
    torch.testing.assert_close(ff.ops.encoder_block(**{**args, "weights": packed_weights}),
                               ff.ops.encoder_block(**args), rtol=1e-5, atol=1e-5)


def test_no_mask_and_a_full_mask_agree():
    args = make_args(lengths=(6, 6))
    torch.testing.assert_close(ff.ops.encoder_block(**{**args, "key_padding_mask": None}), ff.ops.encoder_block(**args))


def test_opcheck():
    for packed in (False, True):
        torch.library.opcheck(torch.ops.fastformer.encoder_block.default, tuple(make_args(packed=packed).values()),
                              test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("change, error, match", [
    (dict(x=torch.randn(3, HIDDEN)), ValueError, r"x must be a non-empty \[B, S, hidden\] batch"),
    (dict(key_padding_mask=torch.ones(3, 4, dtype=torch.bool)), ValueError, r"key_padding_mask must be \[B, S\]"),
    (dict(key_padding_mask=torch.ones(3, 9)), TypeError, "key_padding_mask must be torch.bool"),
    (dict(heads=7), ValueError, "heads must be an int >= 1 that splits the qkv weight's 240 rows"),
    (dict(activation="tanh"), ValueError, "activation must be one of"),
    (dict(weights=[torch.randn(240, HIDDEN), torch.randn(HIDDEN, 80), torch.randn(INTERMEDIATE, HIDDEN + 1),
                   torch.randn(HIDDEN, INTERMEDIATE)]), ValueError, r"up weight must be \[123, 80\]"),
    (dict(biases=[None, None, None, torch.randn(HIDDEN + 1)]), ValueError, r"down bias must be \[80\]"),
    (dict(norm1_bias=torch.randn(3)), ValueError, r"norm1_bias must be \[hidden=80\]"),
    (dict(biases=[None] * 3), ValueError, "biases must list the qkv, out, up, down linears'"),
    (dict(biases=[None, torch.randn(HIDDEN, dtype=torch.float64), None, None]), TypeError,
     "out bias must be torch.float32"),
    (dict(weight_scales=[torch.ones(240), None, None, None]), TypeError, "qkv weight must be torch.int8"),
    (dict(x=torch.randn(3, 9, HIDDEN, dtype=torch.float16)), TypeError, "x must be float32 or bfloat16"),
    (dict(x=[[0.0] * HIDDEN]), TypeError, "x must be a torch.Tensor"),
    (dict(cu_seqlens=torch.tensor([0, 5, 14, 15], dtype=torch.int32), max_seqlen=9), ValueError,
     "give cu_seqlens .* or key_padding_mask .*, not both"),
])
def test_bad_arguments_name_the_argument(change, error, match):
    with pytest.raises(error, match=match):
        ff.ops.encoder_block(**{**make_args(), **change})


def test_packed_arguments_are_checked():
    args = make_args(packed=True)
    with pytest.raises(ValueError, match="max_seqlen must be an int >= 1"):
        ff.ops.encoder_block(**{**args, "max_seqlen": 0})
    with pytest.raises(TypeError, match="cu_seqlens must be torch.int32"):
        ff.ops.encoder_block(**{**args, "cu_seqlens": args["cu_seqlens"].long()})


def test_refuses_weights_that_require_grad():
    args = make_args()
    args["weights"][0].requires_grad_(True)
    with pytest.raises(ValueError, match="qkv weight requires grad: encoder_block is inference-only"):
        ff.ops.encoder_block(**args)
    with torch.inference_mode():
        ff.ops.encoder_block(**args)


BLOCK_ARGS = ("heads", "weights", "biases", "weight_scales", "int8_max_crest", "norm1_weight", "norm1_bias",
              "norm2_weight", "norm2_bias", "activation", "eps", "scale")


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_a_stack_in_one_call_equals_its_blocks_one_by_one(packed):
    """encoder_blocks (what the models call: every block in one call) gives each block's output of encoder_block
    applied in turn, bit for bit, with blocks that differ in activation, biases, int8 linears and eps."""
    blocks = [make_args(packed=packed, seed=1), make_args(packed=packed, activation="relu", biases=False, seed=2),
              make_args(packed=packed, int8=("qkv", "down"), seed=3),
              {**make_args(packed=packed, activation="gelu_tanh", seed=4), "eps": 1e-5}]
    first = blocks[0]
    with torch.inference_mode():
        outputs = encoder_blocks_checked(first["x"], first["key_padding_mask"], first["cu_seqlens"],
                                         first["max_seqlen"], [[b[name] for name in BLOCK_ARGS] for b in blocks])
        x = first["x"]
        assert len(outputs) == len(blocks)
        for block, output in zip(blocks, outputs):
            x = ff.ops.encoder_block(**{**block, "x": x})
            assert torch.equal(output, x)


def test_a_stack_checks_its_lists():
    args = make_args()
    lists = [args["heads"], args["weights"], args["biases"], args["weight_scales"], args["int8_max_crest"],
             [args["norm1_weight"], args["norm2_weight"]], [args["norm1_bias"], args["norm2_bias"]],
             [args["activation"]], [args["eps"]], [args["scale"]]]
    op = torch.ops.fastformer.encoder_blocks.default
    fixed = (args["x"], args["key_padding_mask"], None, 0)
    torch.library.opcheck(op, (*fixed, [lists[0]], *lists[1:]), test_utils=("test_schema", "test_faketensor"))
    with pytest.raises(RuntimeError, match="encoder_blocks: per block, 4 weights"):
        op(*fixed, [args["heads"]] * 2, *lists[1:])
    with pytest.raises(ValueError, match="the blocks must share one int8_max_crest"):
        encoder_blocks_checked(*fixed, [[args[name] for name in BLOCK_ARGS],
                                        [{**args, "int8_max_crest": 8.0}[name] for name in BLOCK_ARGS]])
