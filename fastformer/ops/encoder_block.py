"""encoder_block: one post-norm encoder block (BERT's, RoBERTa's, DistilBERT's), CPU inference, in one call, dense or
packed (padding removed).

On small inputs an encoder's time is mostly Python around its kernels: all-MiniLM-L6-v2 on one 18-token sentence
(2-core development VM, 1 thread) ran its 6 blocks in 6.7-6.9 ms through the modules and in 5.6 ms as the same op
calls written flat. The C++ op (csrc/cpu/encoder_block.cpp) runs the block's own kernels (oneDNN's prepacked linear
with the activation fused, attention_fwd or varlen_attention_fwd, layer_norm_fwd) in the block's order from C++, so
its output equals the Python block's exactly; fastformer.models.block.TransformerBlock calls it for an inference
forward when the block has the shape it covers, with float linears (oneDNN's product, the activation fused) or int8
ones (ff.nn.Int8Linear's product).

The models call encoder_blocks, which runs a whole stack's blocks in one call (encoder_block on each in turn), so
that no Python runs between blocks either: in all-MiniLM-L6-v2's forward of one 18-token sentence (2-core AVX-512 VM,
2 threads) the Python between its 6 blocks took 0.29-0.31 ms (two runs, medians), ~50 us a block where it takes ~15
alone: it runs on caches each block's 7 MB of weights have just swept.

Here: the fake impls (so the ops trace under torch.compile), the functional wrapper with its input checks (the ops are
inference-only: no autograd), and encoder_block_ref, the semantics in plain PyTorch.
"""
import torch
import torch.nn.functional as F

from fastformer.ops import _block_args, _dispatch
from fastformer.ops.int8_rows import dequantize_rows_int32_ref, quantize_rows_int8_ref
from fastformer.ops.varlen_attention import varlen_attention_ref

_ops = torch.ops.fastformer
AVAILABLE = hasattr(_ops, "encoder_blocks")  # a build older than the ops: the model keeps its Python blocks
LINEARS = ("qkv", "out", "up", "down")


def _int8_linear_ref(x, weight_int8, weight_scale, bias, max_crest):
    """ff.nn.Int8Linear's product: rows quantized per row (a second, residual row past max_crest), int32 product."""
    rows = x.reshape(-1, x.shape[-1])
    quantized, row_scale, refined = quantize_rows_int8_ref(rows, max_crest)
    acc = quantized.to(torch.int32) @ weight_int8.to(torch.int32).t()  # [M + R, N]
    out = dequantize_rows_int32_ref(acc, row_scale, weight_scale, bias, refined)
    return out.reshape(*x.shape[:-1], weight_int8.shape[0])


def encoder_block_ref(x, key_padding_mask, cu_seqlens, max_seqlen, heads, weights, biases, weight_scales,
                      int8_max_crest, norm1_weight, norm1_bias, norm2_weight, norm2_bias, activation, eps, scale):
    """The semantics: the post-norm block on x [B, S, hidden] (key_padding_mask bool [B, S], True = attend, or None)
    or on packed tokens x [T, hidden] with cu_seqlens. weights, biases, weight_scales: the qkv, out, up and down
    linears'; one with a scale is int8 (ff.nn.Int8Linear's product)."""
    def linear(t, i):
        if weight_scales[i] is not None:
            return _int8_linear_ref(t, weights[i], weight_scales[i], biases[i], int8_max_crest)
        return F.linear(t, weights[i], biases[i])

    hidden = x.shape[-1]
    qkv = linear(x, 0)
    head_dim = qkv.shape[-1] // (3 * heads)
    if cu_seqlens is not None:
        q, k, v = qkv.view(-1, 3, heads, head_dim).unbind(1)  # [T, H, D]
        attended = varlen_attention_ref(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=scale)
    else:
        batch, seq = x.shape[:2]
        q, k, v = qkv.view(batch, seq, 3, heads, head_dim).transpose(1, 3).unbind(2)  # [B, H, S, D]
        mask = key_padding_mask[:, None, None, :] if key_padding_mask is not None else None
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale).transpose(1, 2)
    h = F.layer_norm(x + linear(attended.reshape(*x.shape[:-1], -1), 1), (hidden,), norm1_weight, norm1_bias, eps)
    up = _block_args.ACTIVATIONS[activation](linear(h, 2))
    return F.layer_norm(h + linear(up, 3), (hidden,), norm2_weight, norm2_bias, eps)


def _check(x, key_padding_mask, cu_seqlens, max_seqlen, heads, weights, biases, weight_scales, activation, norms):
    dtype = _block_args.input_dtype(x)
    for name, given in (("weights", weights), ("biases", biases), ("weight_scales", weight_scales)):
        if not isinstance(given, (list, tuple)) or len(given) != len(LINEARS):
            raise ValueError(f"{name} must list the {', '.join(LINEARS)} linears' (4 entries), got {given!r:.80}")
    _block_args.check_tensors("encoder_block", {"x": x, "key_padding_mask": key_padding_mask,
                                                "cu_seqlens": cu_seqlens, **norms}, dtype)
    for name, weight, bias, weight_scale in zip(LINEARS, weights, biases, weight_scales):
        _block_args.check_tensors("encoder_block", {f"{name} bias": bias, f"{name} weight scale": weight_scale},
                                  torch.float32)
        _block_args.check_tensors("encoder_block", {f"{name} weight": weight},
                                  torch.int8 if weight_scale is not None else dtype)
    if cu_seqlens is not None:
        if key_padding_mask is not None:
            raise ValueError("give cu_seqlens (packed tokens) or key_padding_mask (a padded batch), not both")
        if x.dim() != 2 or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"packed x must be [T, hidden] with cu_seqlens [B + 1], got {tuple(x.shape)} and "
                             f"{tuple(cu_seqlens.shape)}")
        if not isinstance(max_seqlen, int) or max_seqlen < 1:
            raise ValueError(f"max_seqlen must be an int >= 1 (the longest sequence), got {max_seqlen!r}")
    elif x.dim() != 3 or x.shape[0] * x.shape[1] == 0:
        raise ValueError(f"x must be a non-empty [B, S, hidden] batch (or [T, hidden] with cu_seqlens), got shape "
                         f"{tuple(x.shape)}")
    elif key_padding_mask is not None and tuple(key_padding_mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"key_padding_mask must be [B, S] = {list(x.shape[:2])}, got {list(key_padding_mask.shape)}")
    if not isinstance(heads, int) or heads < 1 or weights[0].shape[0] % (3 * heads):
        raise ValueError(f"heads must be an int >= 1 that splits the qkv weight's {weights[0].shape[0]} rows into q, "
                         f"k, v, got {heads!r}")
    _block_args.check_shapes(x.shape[-1], weights[0].shape[0] // 3, {
        name: (f"{name} weight", weight, [(f"{name} bias", bias), (f"{name} weight scale", weight_scale)])
        for name, weight, bias, weight_scale in zip(LINEARS, weights, biases, weight_scales)}, norms)
    _block_args.check_activation(activation)


def encoder_block(x, key_padding_mask, cu_seqlens, max_seqlen, heads, weights, biases, weight_scales, int8_max_crest,
                  norm1_weight, norm1_bias, norm2_weight, norm2_bias, activation, eps, scale):
    """encoder_block_ref's result from the C++ op, after checking the arguments. A float weight may also be the
    oneDNN-packed tensor ff.nn.Linear caches (torch.ops.mkldnn._reorder_linear_weight)."""
    norms = {"norm1_weight": norm1_weight, "norm1_bias": norm1_bias, "norm2_weight": norm2_weight,
             "norm2_bias": norm2_bias}
    _check(x, key_padding_mask, cu_seqlens, max_seqlen, heads, weights, biases, weight_scales, activation, norms)
    return encoder_block_checked(x.contiguous(), key_padding_mask, cu_seqlens, max_seqlen, heads, list(weights),
                                 list(biases), list(weight_scales), int8_max_crest, norm1_weight, norm1_bias,
                                 norm2_weight, norm2_bias, activation, eps, scale)


def encoder_block_checked(*args):
    """encoder_block on arguments the caller has checked: the model's block, which owns its weights."""
    return _dispatch.call(_ops.encoder_block.default, *args, grad_inputs=())


def encoder_blocks_checked(x, key_padding_mask, cu_seqlens, max_seqlen, blocks: list) -> list:
    """Each block's output, blocks running in turn on x through one call of the C++ op encoder_blocks (no Python
    between blocks), where `blocks` holds each block's encoder_block arguments after max_seqlen (heads, weights, ...,
    scale), checked by the caller (the model's blocks)."""
    heads, weights, biases, scales, crests, norm_weights, norm_biases, activations, eps, attention_scales = (
        [], [], [], [], set(), [], [], [], [], [])
    for (block_heads, block_weights, block_biases, block_scales, crest, norm1_weight, norm1_bias, norm2_weight,
         norm2_bias, activation, block_eps, attention_scale) in blocks:
        heads.append(block_heads)
        weights += block_weights
        biases += block_biases
        scales += block_scales
        crests.add(crest)
        norm_weights += (norm1_weight, norm2_weight)
        norm_biases += (norm1_bias, norm2_bias)
        activations.append(activation)
        eps.append(block_eps)
        attention_scales.append(attention_scale)
    if len(crests) != 1:
        raise ValueError(f"the blocks must share one int8_max_crest, got {sorted(crests)}")
    return _dispatch.call(_ops.encoder_blocks.default, x, key_padding_mask, cu_seqlens, max_seqlen, heads, weights,
                          biases, scales, crests.pop(), norm_weights, norm_biases, activations, eps,
                          attention_scales, grad_inputs=())


if AVAILABLE:
    @torch.library.register_fake(_ops.encoder_block.default)
    def _fake(x, *_args):
        return x.new_empty(x.shape)

    @torch.library.register_fake(_ops.encoder_blocks.default)
    def _fake_blocks(x, key_padding_mask, cu_seqlens, max_seqlen, heads, *_args):
        return [x.new_empty(x.shape) for _ in heads]
