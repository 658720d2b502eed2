"""ff.nn.MultiheadAttention: torch.nn.MultiheadAttention running on ff.ops.attention."""
import torch
import torch.nn.functional as F
from torch import Tensor

from fastformer.nn._dropin import _DropIn
from fastformer.ops.attention import attention

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _split_heads(x: Tensor, num_heads: int, batch_first: bool) -> Tensor:
    """[B, S, H*D] (batch_first) or [S, B, H*D] -> a [B, H, S, D] view (no copy; last dim contiguous)."""
    x = x.unflatten(-1, (num_heads, -1))  # [B, S, H, D] or [S, B, H, D]
    return x.permute(0, 2, 1, 3) if batch_first else x.permute(1, 2, 0, 3)


def _merge_heads(x: Tensor, batch_first: bool) -> Tensor:
    """[B, H, S, D] -> [B, S, H*D] (batch_first) or [S, B, H*D]."""
    x = x.permute(0, 2, 1, 3) if batch_first else x.permute(2, 0, 1, 3)
    return x.flatten(-2)


class MultiheadAttention(_DropIn, torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention whose attention runs on ff.ops.attention (fused, never materializing
    the [L, S] weights). Same constructor, parameters, state_dict keys, forward signature and mask
    conventions: key_padding_mask / attn_mask bool True = NOT allowed (torch's convention) or float
    additive; attn_mask [L, S] or [N * num_heads, L, S]; is_causal is a hint that attn_mask is causal.

    Falls back to torch's own implementation (identical results) for need_weights=True (the weights
    must be materialized; note torch's default is True, pass need_weights=False), add_bias_kv,
    add_zero_attn, nested tensors and inputs of other ranks than 2 or 3 (torch then raises its own error).
    One difference: a query whose every key is masked gives zeros here, NaN in torch.
    `backend` as in ff.ops (None = auto; FASTFORMER_BACKEND overrides it); `from_torch` adopts a torch module.
    """

    def _needs_torch(self, query: Tensor, key: Tensor, value: Tensor, need_weights: bool) -> bool:
        return (need_weights or self.bias_k is not None or self.add_zero_attn or query.dtype not in _KERNEL_DTYPES
                or query.dim() not in (2, 3) or any(t.is_nested for t in (query, key, value)))

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q, k, v projected and split into heads: [B, H, L, D], [B, H, S, D] views of the projections."""
        heads, batch_first, embed = self.num_heads, self.batch_first, self.embed_dim
        bias = self.in_proj_bias
        b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
        if self._qkv_same_embed_dim and query is key and key is value:
            qkv = F.linear(query, self.in_proj_weight, bias)  # [..., 3E]: one GEMM, q/k/v are views of it
            return tuple(_split_heads(t, heads, batch_first) for t in qkv.chunk(3, dim=-1))
        if self._qkv_same_embed_dim:
            w_q, w_kv = self.in_proj_weight[:embed], self.in_proj_weight[embed:]
            q = F.linear(query, w_q, b_q)
            if key is value:
                k, v = F.linear(key, w_kv, bias[embed:] if bias is not None else None).chunk(2, dim=-1)
            else:
                w_k, w_v = w_kv.chunk(2)
                k, v = F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)
        else:
            q = F.linear(query, self.q_proj_weight, b_q)
            k = F.linear(key, self.k_proj_weight, b_k)
            v = F.linear(value, self.v_proj_weight, b_v)
        return tuple(_split_heads(t, heads, batch_first) for t in (q, k, v))

    def _masks(self, key_padding_mask, attn_mask, batch: int, seq_q: int, seq_k: int):
        """torch's masks -> (additive attn_bias or None, bool key_padding_mask with True = attend, or None)."""
        bias = None
        if attn_mask is not None:
            if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
                raise TypeError(f"attn_mask must be a bool or float tensor, got {attn_mask.dtype}")
            if attn_mask.dim() == 3:
                attn_mask = attn_mask.view(batch, self.num_heads, seq_q, seq_k)  # [N*H, L, S] -> [N, H, L, S]
            elif attn_mask.dim() != 2:
                raise ValueError(f"attn_mask must be [L, S] or [N * num_heads, L, S], got {tuple(attn_mask.shape)}")
            bias = attn_mask if attn_mask.is_floating_point() else torch.zeros(
                attn_mask.shape, dtype=torch.float32, device=attn_mask.device).masked_fill_(attn_mask, float("-inf"))
        attend = None
        if key_padding_mask is not None:
            if key_padding_mask.dtype == torch.bool:
                attend = ~key_padding_mask
            elif key_padding_mask.is_floating_point():
                padding = key_padding_mask.view(batch, 1, 1, seq_k)
                bias = padding if bias is None else bias + padding
            else:
                raise TypeError(f"key_padding_mask must be a bool or float tensor, got {key_padding_mask.dtype}")
        return bias, attend

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        if self._needs_torch(query, key, value, need_weights):
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint (as torch.nn.MultiheadAttention).")
        unbatched = query.dim() == 2
        if unbatched:  # [L, E] -> a batch of one in the module's layout
            dim = 0 if self.batch_first else 1
            query, key, value = (t.unsqueeze(dim) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        q, k, v = self._project(query, key, value)  # [B, H, L, D], [B, H, S, D]
        batch, _, seq_q, _ = q.shape
        seq_k = k.shape[2]
        # The causal hint lets the kernel skip the mask; it is top-left aligned in torch, so only
        # when L == S does it coincide with our bottom-right causal, else attn_mask is used as given.
        causal = is_causal and seq_q == seq_k
        bias, attend = self._masks(key_padding_mask, None if causal else attn_mask, batch, seq_q, seq_k)
        out = attention(q, k, v, attn_bias=bias, key_padding_mask=attend, causal=causal,
                        dropout_p=self.dropout if self.training else 0.0, backend=self.backend)  # [B, H, L, D]
        out = F.linear(_merge_heads(out, self.batch_first), self.out_proj.weight, self.out_proj.bias)
        if unbatched:
            out = out.squeeze(0 if self.batch_first else 1)
        return out, None
