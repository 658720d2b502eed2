"""Padding removal: the real tokens of a padded batch packed into one [T, ...] tensor.

A batch of B sequences padded to S positions holds T <= B * S real tokens; on serving traffic T is
often half of B * S (all-MiniLM-L6-v2 on 32 real sentences: 40% real). Every linear, norm, FFN and
residual is per token, so an encoder that packs once after the embeddings ([B, S, hidden] ->
[T, hidden]) and unpacks once at the end computes none of the padding; attention, the only op that
mixes tokens, runs as ff.ops.varlen_attention over the cumulative offsets `cu_seqlens` (flash-attn's
varlen convention). `PackedBatch` is built once per forward from the attention mask and passed down
the layers.
"""
from dataclasses import dataclass

import torch
from torch import Tensor

from fastformer import ops


def pack_if_padded(x: Tensor, key_padding_mask: Tensor | None) -> tuple[Tensor, Tensor | None, "PackedBatch | None"]:
    """What a stack's forward runs on: (x [T, hidden], None, the PackedBatch) for a padded batch, else
    (x [B, S, hidden], key_padding_mask, None) unchanged (see PackedBatch.from_mask)."""
    packed = PackedBatch.from_mask(key_padding_mask)
    if packed is None:
        return x, key_padding_mask, None
    return packed.pack(x), None, packed


@dataclass(frozen=True)
class PackedBatch:
    """Where the real tokens of a padded [B, S] batch sit, for packing [B, S, ...] into [T, ...] and back.

    index: int64 [T], flat positions b * S + s of the real tokens, row by row in order.
    cu_seqlens: int32 [B + 1], sequence b is packed rows cu_seqlens[b]:cu_seqlens[b + 1].
    max_seqlen: the longest sequence's length (a Python int: read once here, never again per layer).
    """

    index: Tensor
    cu_seqlens: Tensor
    max_seqlen: int
    batch: int
    seq: int

    @classmethod
    def from_mask(cls, key_padding_mask: Tensor | None) -> "PackedBatch | None":
        """The packing of a bool [B, S] mask, or None where the dense path is the right one: no mask, no
        padding (packing would only add two copies), a row with holes (a real token after padding and
        before another real one: removing the hole would shift T5's relative positions and causal
        alignment), or inside torch.compile (T is data-dependent; the graph keeps the dense path)."""
        if key_padding_mask is None or torch.compiler.is_compiling():
            return None
        lengths = key_padding_mask.sum(1)  # [B]
        batch, seq = key_padding_mask.shape
        total = int(lengths.sum())
        if total == batch * seq:
            return None
        # A row is one contiguous run iff its first and last real tokens are lengths - 1 apart.
        positions = torch.arange(seq, device=key_padding_mask.device)
        first = torch.where(key_padding_mask, positions, seq).amin(1)  # [B]
        last = torch.where(key_padding_mask, positions, -1).amax(1)  # [B]
        if bool(((last - first + 1 != lengths) & (lengths > 0)).any()):
            return None
        index = key_padding_mask.reshape(-1).nonzero().squeeze(1)  # [T]
        cu_seqlens = torch.zeros(batch + 1, dtype=torch.int32, device=key_padding_mask.device)
        cu_seqlens[1:] = lengths.cumsum(0)
        return cls(index, cu_seqlens, int(lengths.max()), batch, seq)

    def pack(self, x: Tensor) -> Tensor:
        """[B, S, ...] -> [T, ...], the real tokens only."""
        return x.reshape(self.batch * self.seq, *x.shape[2:]).index_select(0, self.index)

    def unpack(self, x: Tensor) -> Tensor:
        """[T, ...] -> [B, S, ...] with zeros at the padding."""
        out = x.new_zeros((self.batch * self.seq, *x.shape[1:]))
        # index_put_ keeps only the index for backward; index_copy also kept x (a [T, hidden] per unpack, which
        # made a checkpointed packed model keep more than the dense one).
        return out.index_put_((self.index,), x).view(self.batch, self.seq, *x.shape[1:])

    def attention(self, qkv: Tensor, attn_bias=None, causal=False, scale=None, dropout_p=0.0) -> Tensor:
        """Self-attention of each sequence over its own tokens: qkv [T, 3, H, D] -> [T, H * D]."""
        q, k, v = qkv.unbind(1)  # [T, H, D] strided views
        out = ops.varlen_attention(q, k, v, self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen,
                                   attn_bias=attn_bias, causal=causal, scale=scale, dropout_p=dropout_p)
        return out.reshape(out.shape[0], -1)
