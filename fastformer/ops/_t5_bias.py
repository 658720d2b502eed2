"""T5's bucketed relative position bias as a spec the attention kernels evaluate without materializing it.

A query at absolute position i + Sk - Sq (bottom-right aligned, as with a KV cache) and key j are at
relative position rel = j - (i + Sk - Sq). T5 maps rel to one of num_buckets buckets (half per direction
when bidirectional): exact buckets for small distances, logarithmically wider ones up to max_distance,
one saturated bucket beyond. The bias is table[bucket, h], table = the T5 `relative_attention_bias.weight`.

The kernels get the bucket of each distance as an int32 lookup table (rel_lut[n] for n in
[0, max_distance]; see csrc/fastformer.cpp), computed here with the exact float32 formula of Hugging Face
transformers' T5Attention._relative_position_bucket on the table's device, so buckets match it bit for bit.
"""
import math
from dataclasses import dataclass

import torch
from torch import Tensor

# rel_lut per (num_buckets, max_distance, bidirectional, device): 129 ints, reused by every call
# (decode loops call attention once per token).
_LUT_CACHE: dict = {}


def t5_bucket_lut(num_buckets: int, max_distance: int, bidirectional: bool, device) -> Tensor:
    """int32 [max_distance + 1]: the bucket of distance n within one direction's half.

    For n >= max_distance the bucket saturates at the half's last bucket, so clamping n to
    max_distance (what the kernels do) gives T5's bucket for every distance.
    """
    key = (num_buckets, max_distance, bidirectional, torch.device(device))
    if torch.compiler.is_compiling():
        return _bucket_lut(num_buckets, max_distance, bidirectional, device)
    if key not in _LUT_CACHE:
        # A normal tensor even when first asked for under inference_mode (generation): an inference
        # tensor in the cache could not be saved for backward by a later training step.
        with torch.inference_mode(False):
            _LUT_CACHE[key] = _bucket_lut(num_buckets, max_distance, bidirectional, device)
    return _LUT_CACHE[key]


def _bucket_lut(num_buckets: int, max_distance: int, bidirectional: bool, device) -> Tensor:
    half = num_buckets // 2 if bidirectional else num_buckets
    max_exact = half // 2
    n = torch.arange(max_distance + 1, device=device)  # [L]
    # T5's formula: max_exact + log(n / max_exact) / log(max_distance / max_exact) * (half - max_exact),
    # in float32 and truncated, capped at half - 1; exact below max_exact. log(0) = -inf is masked out.
    log_ratio = torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).to(torch.long)
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return torch.where(n < max_exact, n, large).to(torch.int32)


def distance_buckets(rel_lut: Tensor, num_buckets: int, bidirectional: bool, seq_q: int, seq_k: int) -> Tensor:
    """int64 [Sq + Sk - 1]: bucket of distance index t = j - i + Sq - 1 (rel = t - (Sk - 1)), per the contract."""
    rel = torch.arange(max(seq_q + seq_k - 1, 0), device=rel_lut.device) - (seq_k - 1)  # [Sq + Sk - 1]
    distance = rel.abs() if bidirectional else torch.clamp(-rel, min=0)
    bucket = rel_lut[torch.clamp(distance, max=rel_lut.shape[0] - 1)].long()
    if bidirectional:
        bucket = bucket + (rel > 0).long() * (num_buckets // 2)
    return bucket


@dataclass(frozen=True, eq=False)
class T5RelativeBias:
    """Pass as `attn_bias` to ff.ops.attention: T5's relative position bias, computed in the kernel.

    table: [num_buckets, H] float (T5's `relative_attention_bias.weight`; gradients flow to it);
    bidirectional: True in encoders, False in decoder self-attention.
    """

    table: Tensor
    num_buckets: int = 32
    max_distance: int = 128
    bidirectional: bool = True

    def __post_init__(self):
        if not isinstance(self.table, Tensor):
            raise TypeError(f"T5RelativeBias.table must be a torch.Tensor, got {type(self.table).__name__}")
        if self.table.dim() != 2 or self.table.shape[0] != self.num_buckets:
            raise ValueError(f"T5RelativeBias.table must have shape [num_buckets={self.num_buckets}, H], "
                             f"got {tuple(self.table.shape)}")
        if not self.table.is_floating_point():
            raise TypeError(f"T5RelativeBias.table must be a float tensor, got {self.table.dtype}")
        half = self.num_buckets // 2 if self.bidirectional else self.num_buckets
        if half < 2 or self.max_distance <= half // 2:
            raise ValueError(f"T5RelativeBias needs num_buckets per direction >= 2 and max_distance > "
                             f"{half // 2} (num_buckets={self.num_buckets}, max_distance={self.max_distance})")

    @property
    def num_heads(self) -> int:
        return self.table.shape[1]

    def lut(self) -> Tensor:
        """rel_lut of the C++ schema: int32 [max_distance + 1] on the table's device."""
        return t5_bucket_lut(self.num_buckets, self.max_distance, self.bidirectional, self.table.device)

    def buckets(self, seq_q: int, seq_k: int) -> Tensor:
        """int64 [Sq, Sk]: the bucket of (query i, key j), bottom-right aligned."""
        by_distance = distance_buckets(self.lut(), self.num_buckets, self.bidirectional, seq_q, seq_k)
        i = torch.arange(seq_q, device=self.table.device)[:, None]
        j = torch.arange(seq_k, device=self.table.device)[None, :]
        return by_distance[j - i + seq_q - 1]  # [Sq, Sk]

    def materialize(self, seq_q: int, seq_k: int) -> Tensor:
        """The bias as a dense [1, H, Sq, Sk] tensor in the table's dtype (for references and baselines)."""
        return self.table[self.buckets(seq_q, seq_k)].permute(2, 0, 1).unsqueeze(0)  # [1, H, Sq, Sk]
