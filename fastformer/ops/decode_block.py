"""decode_block: one pre-norm transformer block (GPT-2's) for ONE new token of batch 1 against its KV cache, CPU
fp32 or bf16 inference, in one call.

A batch-1 decode step is 49 single-row products that stream the weights (GPT-2-small: ~22 ms of a ~26 ms step on
the 2-core development VM) and ~150 small calls around them: norms, attention over the cache, cache writes,
activations. Through the Python modules those small calls took 2.7 ms per step (bench/decode_split_cpu.py,
"other work"), mostly module calls, argument checks and backend choice rather than arithmetic. The C++ op
(csrc/cpu/decode_block.cpp) runs the block's own kernels (layer_norm_fwd / rms_norm_fwd, gemv, attention_fwd) in the
block's order from C++, so its output equals the Python block's exactly; fastformer.models.block.TransformerBlock
calls it for a decode step when the block has the shape it covers.

Here: the fake impl (so the op traces under torch.compile), the functional wrapper with its input checks (the op is
inference-only: no autograd), and decode_block_ref, the semantics in plain PyTorch.
"""
import torch
import torch.nn.functional as F

from fastformer.ops import _block_args, _dispatch

_ops = torch.ops.fastformer
AVAILABLE = hasattr(_ops, "decode_block")  # a build older than the op: the model keeps its Python block


def decode_block_ref(x, keys, values, length, key_padding_mask, norm1_weight, norm1_bias, qkv_weight, qkv_bias,
                     out_weight, out_bias, norm2_weight, norm2_bias, up_weight, up_bias, down_weight, down_bias, rms,
                     eps, activation, scale):
    """The semantics: writes the token's k, v into keys / values [1, H, max_length, D] at slot `length` and returns
    the pre-norm block's output for x [1, hidden]."""
    heads, head_dim = keys.shape[1], keys.shape[3]

    def norm(t, weight, bias):
        if rms:
            return F.rms_norm(t, (t.shape[-1],), weight, eps)
        return F.layer_norm(t, (t.shape[-1],), weight, bias, eps)

    q, k, v = F.linear(norm(x, norm1_weight, norm1_bias), qkv_weight, qkv_bias).view(3, 1, heads, 1, head_dim)
    keys[:, :, length] = k[:, :, 0]
    values[:, :, length] = v[:, :, 0]
    scores = (q @ keys[:, :, : length + 1].transpose(-1, -2)) * scale  # [1, H, 1, length + 1]
    scores = scores.masked_fill(~key_padding_mask[:, None, None, :], float("-inf"))
    attended = torch.softmax(scores, dim=-1) @ values[:, :, : length + 1]  # [1, H, 1, D]
    x = x + F.linear(attended.reshape(1, heads * head_dim), out_weight, out_bias)
    up = _block_args.ACTIVATIONS[activation](F.linear(norm(x, norm2_weight, norm2_bias), up_weight, up_bias))
    return x + F.linear(up, down_weight, down_bias)


NORMS = ("norm1_weight", "norm1_bias", "norm2_weight", "norm2_bias")


def _check(x, keys, values, length, key_padding_mask, activation, tensors):
    _block_args.check_tensors("decode_block", tensors, _block_args.input_dtype(x))
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x must be one token's row [1, hidden], got shape {tuple(x.shape)}")
    if keys.dim() != 4 or keys.shape[0] != 1 or keys.shape != values.shape:
        raise ValueError(f"keys and values must be one row's cache [1, H, max_length, D] of the same shape, got "
                         f"{tuple(keys.shape)} and {tuple(values.shape)}")
    if not 0 <= length < keys.shape[2]:
        raise ValueError(f"length must be in [0, {keys.shape[2]}) (a free slot in the cache), got {length}")
    if tuple(key_padding_mask.shape) != (1, length + 1):
        raise ValueError(f"key_padding_mask must be [1, length + 1] = [1, {length + 1}], got "
                         f"{tuple(key_padding_mask.shape)}")
    if keys.stride(-1) != 1 or values.stride(-1) != 1:
        raise ValueError("keys and values must have a contiguous last dim (head_dim)")
    t = tensors
    _block_args.check_shapes(x.shape[1], keys.shape[1] * keys.shape[3], {
        name: (f"{name}_weight", t[f"{name}_weight"], [(f"{name}_bias", t[f"{name}_bias"])])
        for name in ("qkv", "out", "up", "down")}, {name: t[name] for name in NORMS})
    _block_args.check_activation(activation)


def decode_block(x, keys, values, length, key_padding_mask, norm1_weight, norm1_bias, qkv_weight, qkv_bias, out_weight,
                 out_bias, norm2_weight, norm2_bias, up_weight, up_bias, down_weight, down_bias, rms, eps, activation,
                 scale):
    """decode_block_ref's result from the C++ op, after checking the arguments."""
    tensors = {"x": x, "keys": keys, "values": values, "key_padding_mask": key_padding_mask,
               "norm1_weight": norm1_weight, "norm1_bias": norm1_bias, "qkv_weight": qkv_weight, "qkv_bias": qkv_bias,
               "out_weight": out_weight, "out_bias": out_bias, "norm2_weight": norm2_weight,
               "norm2_bias": norm2_bias, "up_weight": up_weight, "up_bias": up_bias, "down_weight": down_weight,
               "down_bias": down_bias}
    _check(x, keys, values, length, key_padding_mask, activation, tensors)
    return decode_block_checked(x, keys, values, length, key_padding_mask, norm1_weight, norm1_bias, qkv_weight,
                                qkv_bias, out_weight, out_bias, norm2_weight, norm2_bias, up_weight, up_bias,
                                down_weight, down_bias, rms, eps, activation, scale)


def decode_block_checked(*args):
    """decode_block on arguments the caller has checked: the model's block, which owns its weights and cache."""
    return _dispatch.call(_ops.decode_block.default, *args, grad_inputs=())


if AVAILABLE:
    @torch.library.register_fake(_ops.decode_block.default)
    def _fake(x, keys, values, *_args):
        return x.new_empty(x.shape)
