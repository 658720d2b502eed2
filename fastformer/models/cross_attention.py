"""Cross-attention of an encoder-decoder: decoder queries attend over the encoder's output.

The keys and values depend only on the encoder output, so `project_memory` computes them once per input
(one fused K/V projection; k and v are strided views of one [B, Sk, 2, H, D] tensor) and every decode
step reuses them; `forward` projects only the queries.
"""
import torch
from torch import nn

from fastformer import nn as ffnn
from fastformer import ops
from fastformer.models.config import ModelConfig


class CrossAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim = config.num_heads, config.head_dim
        self.scale = None if config.attention_scale else 1.0
        self.dropout = config.attention_dropout
        inner = config.num_heads * config.head_dim
        self.q = ffnn.Linear(config.hidden_size, inner, bias=config.bias)
        self.kv = ffnn.Linear(config.hidden_size, 2 * inner, bias=config.bias)
        self.out = ffnn.Linear(inner, config.hidden_size, bias=config.bias)

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory [B, Sk, hidden] (the encoder output) -> keys, values [B, H, Sk, D]."""
        batch, seq, _ = memory.shape
        kv = self.kv(memory).view(batch, seq, 2, self.num_heads, self.head_dim)  # [B, Sk, 2, H, D]
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)  # [B, H, Sk, D] strided views

    def forward(self, x, keys, values, key_padding_mask=None):
        """x [B, Sq, hidden]; keys, values from project_memory; key_padding_mask bool [B, Sk], True = token."""
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, self.num_heads, self.head_dim).transpose(1, 2)  # [B, H, Sq, D]
        attn = ops.attention(q, keys, values, key_padding_mask=key_padding_mask, scale=self.scale,
                             dropout_p=self.dropout if self.training else 0.0)
        return self.out(attn.transpose(1, 2).reshape(batch, seq, -1))  # [B, Sq, H*D]
