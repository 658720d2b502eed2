"""The transformer block shared by the encoder, decoder and encoder-decoder models.

Attention runs on ff.ops.attention with a fused QKV projection (q, k, v are strided views of one
[B, S, 3, H, D] tensor, no copies); every residual add is fused into the following norm through
ff.ops.layer_norm / rms_norm(residual=...).
"""
from torch import nn

from fastformer import nn as ffnn
from fastformer import ops
from fastformer.models.config import ModelConfig
from fastformer.models.dropout import Dropout
from fastformer.nn.activation import ACTIVATIONS


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rms":
        return ffnn.RMSNorm(config.hidden_size, eps=config.norm_eps)
    return ffnn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.layer_norm_bias)


class SelfAttention(nn.Module):
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


class FeedForward(nn.Module):
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


class TransformerBlock(nn.Module):
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

    def forward(self, x, key_padding_mask=None, attn_bias=None, causal=False, cache=None, layer=0, packed=None):
        if self.pre_norm:
            h = self.dropout(self.attn(self.attn_norm(x), key_padding_mask, attn_bias, causal, cache, layer, packed))
            normed, x = self.ffn_norm(h, residual=x)
            return x + self.dropout(self.ffn(normed))
        h = self.dropout(self.attn(x, key_padding_mask, attn_bias, causal, cache, layer, packed))
        x, _ = self.attn_norm(h, residual=x)
        x, _ = self.ffn_norm(self.dropout(self.ffn(x)), residual=x)
        return x
