"""The transformer block shared by the encoder, decoder and encoder-decoder models.

Attention runs on ff.ops.attention with a fused QKV projection (q, k, v are strided views of one
[B, S, 3, H, D] tensor, no copies); every residual add is fused into the following norm through
ff.ops.layer_norm / rms_norm(residual=...).
"""
import torch
from torch import nn
from torch.nn.modules import module as module_hooks

from fastformer import nn as ffnn
from fastformer import ops
from fastformer import _backends, _module_epoch
from fastformer.models.config import ModelConfig
from fastformer.models.dropout import Dropout
from fastformer.nn.activation import ACTIVATIONS
from fastformer.nn.linear import single_rows_on_gemv
from fastformer.ops.panel_linear import PANEL_MAX_ROWS
from fastformer.ops._block_args import ACTIVATIONS as FUSED_ACTIVATIONS
from fastformer.ops.attention import default_scale
from fastformer.ops.decode_block import decode_block_checked
from fastformer.nn.int8_linear import MAX_CREST as INT8_MAX_CREST
from fastformer.ops.encoder_block import (AVAILABLE as _HAS_ENCODER_BLOCK, encoder_block_checked,
                                          encoder_blocks_checked)


def fused_blocks_apply(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether a stack's forward may run its blocks through the fused CPU ops (TransformerBlock.decode_token,
    .encode), which skip autograd and dropout: the CPU kernels run x, nothing records a gradient, eval mode."""
    return (x.device.type == "cpu" and not module.training
            and (torch.is_inference_mode_enabled() or not torch.is_grad_enabled())
            and not torch.compiler.is_compiling() and _backends.resolve("attention", None, x.device) == "cpu")


def encoder_blocks(stack: nn.Module, x, key_padding_mask=None, attn_bias=None, packed=None):
    """Each of stack.layers' outputs in turn (a generator). Where every block fits the fused CPU op
    (TransformerBlock.encode_args: no attention bias, fused_blocks_apply), all run in one call of
    ff.ops.encoder_blocks; else each block that fits runs the one-block op, the others their modules."""
    fuse = attn_bias is None and _HAS_ENCODER_BLOCK and fused_blocks_apply(stack, x)
    blocks = [layer.encode_args(x) for layer in stack.layers] if fuse else [None] * len(stack.layers)
    cu_seqlens, max_seqlen = (packed.cu_seqlens, packed.max_seqlen) if packed is not None else (None, 0)
    if fuse and None not in blocks:
        yield from encoder_blocks_checked(x, key_padding_mask, cu_seqlens, max_seqlen, blocks)
        return
    for layer, args in zip(stack.layers, blocks):
        if args is not None:
            x = encoder_block_checked(x.contiguous(), key_padding_mask, cu_seqlens, max_seqlen, *args)
        else:
            x = layer(x, key_padding_mask=key_padding_mask, attn_bias=attn_bias, packed=packed)
        yield x


def _global_forward_hooks() -> bool:
    """Whether a forward hook or pre-hook registered for every module (torch.nn.modules.module) would fire."""
    return bool(module_hooks._global_forward_hooks or module_hooks._global_forward_pre_hooks)


def has_forward_hooks(module: nn.Module) -> bool:
    """Whether a forward hook or pre-hook would fire for module or a module in it (~2 us for a block)."""
    return _global_forward_hooks() or any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class _FusedArgs:
    """A fused block op's arguments (or None where the block does not fit the op) for inputs of one kind and dtype,
    and what they were built from. Still valid while the module epoch (fastformer._module_epoch: settings, parameters,
    submodules, classes) is the one they were built at, no forward hook is registered (on a module in the block or
    on every module), and every parameter and buffer of the block keeps its storage and version (an in-place update or
    a .data swap). Checking that takes ~4 us a block. It holds the block's tensors and hook dicts, not its modules,
    which would make the block a reference cycle (freed only by the garbage collector)."""

    __slots__ = ("epoch", "args", "hook_dicts", "tensors", "tensor_state")

    def __init__(self, block: nn.Module, epoch: int, args):
        self.epoch, self.args = epoch, args
        modules = list(block.modules())
        self.hook_dicts = [d for m in modules for d in (m._forward_hooks, m._forward_pre_hooks)]
        self.tensors = [t for m in modules for t in (*m._parameters.values(), *m._buffers.values()) if t is not None]
        self.tensor_state = self._tensor_state()

    def _tensor_state(self) -> list:
        return [(t.data_ptr(), None if t.is_inference() else t._version) for t in self.tensors]

    def valid(self) -> bool:
        return (self.epoch == _module_epoch.current() and not (_global_forward_hooks() or any(self.hook_dicts))
                and self._tensor_state() == self.tensor_state)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return ffnn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return ffnn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.layer_norm_bias)


class SelfAttention(_module_epoch.ChangeTracked, nn.Module):
    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.scale = None if config.attention_scale else 1.0
        if config.attention_scale_by_layer:
            self.scale = (self.head_dim ** -0.5 if config.attention_scale else 1.0) / (layer_index + 1)
        self.dropout = config.attention_dropout
        self.qkv = ffnn.Linear(config.hidden_size, 3 * config.num_heads * config.head_dim, bias=config.bias)
        self.out = ffnn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=config.bias)

    def forward(self, x, key_padding_mask=None, attn_bias=None, causal=False, cache=None, layer=0, packed=None):
        """cache (a fastformer.generation.KVCache): the new k, v are written into it as layer `layer`'s
        and attention runs over every cached key; key_padding_mask then covers them all.
        packed (a fastformer.models.packing.PackedBatch): x is the batch's real tokens [T, hidden]; with a
        cache, only for a prefill (nothing cached before these tokens)."""
        dropout_p = self.dropout if self.training else 0.0
        if packed is not None:
            qkv = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim)  # [T, 3, H, D]
            if cache is not None:  # a packed prefill: the cache keeps the padded [B, H, S, D] layout
                cache.update(layer, *(packed.unpack(qkv[:, i]).transpose(1, 2) for i in (1, 2)))
            return self.out(packed.attention(qkv, attn_bias, causal, self.scale, dropout_p))
        batch, seq, _ = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim)  # [B, S, 3, H, D]
        q, k, v = qkv.transpose(1, 3).unbind(2)  # [B, H, S, D] strided views (~2 us; three selects took ~9)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H, cached + S, D]
        attn = ops.attention(q, k, v, attn_bias=attn_bias, key_padding_mask=key_padding_mask, causal=causal,
                             scale=self.scale, dropout_p=dropout_p)
        return self.out(attn.transpose(1, 2).reshape(batch, seq, -1))  # [B, S, H*D]


class FeedForward(_module_epoch.ChangeTracked, nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.activation = config.activation
        self.up = ffnn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias)
        self.gate = ffnn.Linear(config.hidden_size, config.intermediate_size, bias=config.bias) if config.gated_ffn else None
        self.down = ffnn.Linear(config.intermediate_size, config.hidden_size, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        h = self._activated(self.gate, x) * self.up(x) if self.gate is not None else self._activated(self.up, x)
        return self.down(self.dropout(h))

    def _activated(self, linear, x):
        """act(linear(x)). ff.nn.Linear fuses the activation into its matmul; a linear swapped in by quantization
        (ff.nn.Int8Linear) does not."""
        if isinstance(linear, ffnn.Linear):
            return linear(x, activation=self.activation)
        return ACTIVATIONS[self.activation](linear(x))


class TransformerBlock(_module_epoch.ChangeTracked, nn.Module):
    """Self-attention and feed-forward sublayers with residual adds fused into the norms.

    Post-norm (BERT): x = Norm(x + Attn(x)); x = Norm(x + FFN(x)) — both adds fused into the norms.
    Pre-norm (GPT-2, T5): x = x + Attn(Norm(x)); x = x + FFN(Norm(x)) — the middle add is fused into
    the second norm, which returns (Norm(x + h), x + h) from one kernel.
    x is [B, S, hidden], or the real tokens [T, hidden] of a PackedBatch given as `packed`: only the
    attention tells the two apart.
    """

    def __init__(self, config: ModelConfig, layer_index: int = 0):
        super().__init__()
        self.pre_norm = config.pre_norm
        self.attn = SelfAttention(config, layer_index)
        self.attn_norm = make_norm(config)
        self.ffn = FeedForward(config)
        self.ffn_norm = make_norm(config)
        self.dropout = Dropout(config.dropout)

    def decode_token(self, x, cache, layer, key_padding_mask):
        """The block on one new token of a batch-1 decode step, x [1, hidden], through the fused CPU op
        (fastformer.ops.decode_block: the same kernels, no Python between them); None where the block has a
        shape that op does not cover (post-norm, gated FFN, another activation, quantized linears or weights not
        of x's dtype, a backend other than the CPU kernels, hooks): the caller then runs forward. The caller has
        checked the step with fused_blocks_apply and that something is cached."""
        args = self._fused_args("decode", x.dtype, lambda: self._decode_args(x.dtype))
        if args is None:
            return None
        return decode_block_checked(x, cache.keys[layer], cache.values[layer], cache.length, key_padding_mask, *args)

    def _decode_args(self, dtype: torch.dtype):
        """decode_block's arguments after key_padding_mask for a token of `dtype`, or None where the block does not
        fit the op. Its products are ff.ops.gemv's: where ff.nn.Linear would not take that kernel for a single row of
        `dtype` (bf16 without native bf16 dot products), the block keeps its modules."""
        attn, ffn = self.attn, self.ffn
        norm_type = type(self.attn_norm)
        if not (self.pre_norm and ffn.activation in FUSED_ACTIVATIONS and single_rows_on_gemv(dtype)
                and self._fusable(ffnn.LayerNorm, ffnn.RMSNorm)
                and all(m.weight.dtype == dtype for m in (*self._linears(), self.attn_norm, self.ffn_norm)
                        if m.weight is not None)):
            return None
        rms = norm_type is ffnn.RMSNorm
        eps = self.attn_norm.eps if self.attn_norm.eps is not None else torch.finfo(torch.float32).eps
        bias = (lambda n: None) if rms else (lambda n: n.bias)
        return (self.attn_norm.weight, bias(self.attn_norm), attn.qkv.weight, attn.qkv.bias, attn.out.weight,
                attn.out.bias, self.ffn_norm.weight, bias(self.ffn_norm), ffn.up.weight, ffn.up.bias, ffn.down.weight,
                ffn.down.bias, rms, eps, ffn.activation, self._attention_scale())

    def encode_args(self, x):
        """The fused encoder op's arguments for this block on an inference forward of x [B, S, hidden] or the packed
        tokens [T, hidden] (fastformer.ops.encoder_block's after max_seqlen: the same kernels, no Python between
        them); None where the block has a shape that op does not cover (pre-norm, gated FFN, another activation,
        RMSNorm, linears neither int8 (ff.nn.Int8Linear) nor on the packed path, oneDNN's or panels (fp16, a gradient,
        one row)); the caller then runs forward. The caller has checked the forward with fused_blocks_apply."""
        rows = x.numel() // x.shape[-1]
        if not (x.is_contiguous() and rows > 1):
            return None
        # The linears' products depend on the row count (ff.nn.Linear: panels for a few rows, else oneDNN's).
        return self._fused_args(("encode", rows <= PANEL_MAX_ROWS), x.dtype, lambda: self._encode_args(x))

    def _encode_args(self, x):
        """encoder_block's arguments after max_seqlen for inputs like x (its dtype), or None where the block does
        not fit the op: built by encode_args when the block has changed."""
        attn, ffn = self.attn, self.ffn
        linears = self._linears()
        if not (not self.pre_norm and ffn.activation in FUSED_ACTIVATIONS
                and self._fusable(ffnn.LayerNorm, linear_types=(ffnn.Linear, ffnn.Int8Linear))
                and all(isinstance(m, ffnn.Int8Linear) or m._use_packed(x, m.weight) for m in linears)):
            return None
        int8 = [isinstance(m, ffnn.Int8Linear) for m in linears]
        rows = x.numel() // x.shape[-1]  # every linear of the block sees these rows, whatever its width
        return (attn.num_heads, [m.weight_int8 if q else m._block_weight(x.dtype, rows) for m, q in zip(linears, int8)],
                [m.bias for m in linears], [m.weight_scale if q else None for m, q in zip(linears, int8)],
                INT8_MAX_CREST, self.attn_norm.weight, self.attn_norm.bias, self.ffn_norm.weight, self.ffn_norm.bias,
                ffn.activation, self.attn_norm.eps, self._attention_scale())

    def _fused_args(self, kind, dtype: torch.dtype, build):
        """build()'s arguments for a fused op (kind: "decode", or ("encode", whether the rows are few)) on inputs of
        `dtype`, or its None, reused while the block is unchanged (_FusedArgs). Building them (the fit checks and
        the argument lists) took ~100 us a block: ~0.6 ms of the ~5 ms forward of all-MiniLM-L6-v2 on one 18-token
        sentence (2-core AVX-512 VM, 2 threads)."""
        caches = self.__dict__.setdefault("_fused_args_cache", {})
        cached = caches.get((kind, dtype))
        if cached is None or not cached.valid():
            epoch = _module_epoch.current()
            cached = caches[kind, dtype] = _FusedArgs(self, epoch, build())
        return cached.args

    def __getstate__(self):
        # The fused arguments hold oneDNN-packed weights, which pickle and copy.deepcopy cannot copy (see
        # ff.nn.Linear); a copy builds its own.
        return {k: v for k, v in super().__getstate__().items() if k != "_fused_args_cache"}

    def _linears(self):
        return self.attn.qkv, self.attn.out, self.ffn.up, self.ffn.down

    def _fusable(self, *norm_types, linear_types=(ffnn.Linear,)) -> bool:
        """What both fused block ops need: the attention, FFN and block forward written here (a subclass's would not
        run), a plain FFN, linears of exactly one of linear_types on the CPU kernels with contiguous rows, two norms
        of one of norm_types on the CPU kernels with one eps, no forward hooks (on the block, a module in it, or every
        module): the fused op runs no module, so a hook would silently not fire."""
        norm_type = type(self.attn_norm)
        return (type(self.attn) is SelfAttention and type(self.ffn) is FeedForward
                and type(self).forward is TransformerBlock.forward and self.ffn.gate is None
                and all(type(m) in linear_types and getattr(m, "backend", None) in (None, "cpu")
                        and (m.weight_int8 if isinstance(m, ffnn.Int8Linear) else m.weight).stride(-1) == 1
                        and (m.bias is None or m.bias.is_contiguous()) for m in self._linears())
                and norm_type in norm_types and type(self.ffn_norm) is norm_type
                and self.attn_norm.eps == self.ffn_norm.eps
                and all(n.backend in (None, "cpu") and len(n.normalized_shape) == 1
                        and all(p is None or p.is_contiguous() for p in (n.weight, getattr(n, "bias", None)))
                        for n in (self.attn_norm, self.ffn_norm))
                and not has_forward_hooks(self))

    def _attention_scale(self) -> float:
        return self.attn.scale if self.attn.scale is not None else default_scale(self.attn.head_dim)

    def forward(self, x, key_padding_mask=None, attn_bias=None, causal=False, cache=None, layer=0, packed=None):
        if self.pre_norm:
            h = self.dropout(self.attn(self.attn_norm(x), key_padding_mask, attn_bias, causal, cache, layer, packed))
            normed, x = self.ffn_norm(h, residual=x)
            return x + self.dropout(self.ffn(normed))
        h = self.dropout(self.attn(x, key_padding_mask, attn_bias, causal, cache, layer, packed))
        x, _ = self.attn_norm(h, residual=x)
        x, _ = self.ffn_norm(self.dropout(self.ffn(x)), residual=x)
        return x
