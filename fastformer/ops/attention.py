"""ff.ops.attention: fused scaled-dot-product attention (flash-style) with bias, masks, GQA, T5 bias, dropout.

A drop-in for F.scaled_dot_product_attention's layout: q [B, H, Sq, D], k, v [B, Hkv, Sk, D] with
H % Hkv == 0. The exact semantics are `attention_ref` below and the contract in csrc/fastformer.cpp.
"""
import math

import torch
from torch import Tensor

from fastformer import _backends
from fastformer.ops import _attention, _dispatch, _head_dim
from fastformer.ops._layout import last_dim_contiguous
from fastformer.ops._philox import philox_uniform
from fastformer.ops._t5_bias import T5RelativeBias

__all__ = ["GPU_MAX_HEAD_DIM", "T5RelativeBias", "attention", "attention_ref", "draw_dropout_seed", "dropout_keep_mask"]

GPU_MAX_HEAD_DIM = _head_dim.GPU_MAX_HEAD_DIM
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ---- semantics ------------------------------------------------------------------------------------

def draw_dropout_seed() -> int:
    """A Philox seed from torch's default generator: torch.manual_seed(s) makes dropout reproducible."""
    return int(torch.randint(0, 2**62, (1,)).item())


def dropout_keep_mask(seed: int, dropout_p: float, batch: int, heads: int, seq_q: int, seq_k: int,
                      device=None) -> Tensor:
    """bool [B, H, Sq, Sk]: element (b, h, i, j) survives dropout iff
    philox_uniform(seed, ((b*H + h)*Sq + i)*Sk + j) >= float32(dropout_p), on every backend."""
    offsets = torch.arange(batch * heads * seq_q * seq_k, device=device).view(batch, heads, seq_q, seq_k)
    return philox_uniform(seed, offsets) >= torch.tensor(dropout_p, dtype=torch.float32, device=device)


def attention_ref(q, k, v, attn_bias=None, key_padding_mask=None, causal=False, scale=None, dropout_p=0.0,
                  dropout_seed=None, dropout_keep=None):
    """The documented semantics in plain PyTorch, materializing the [B, H, Sq, Sk] scores.

    Products run in q's dtype and the softmax in fp32 (fp64 for fp64 inputs), like an eager PyTorch
    attention; run it in fp64 for a reference. Scores s = scale * q.k + attn_bias (a tensor
    broadcastable to [B, H, Sq, Sk], a bool tensor with True = attend, or a T5RelativeBias); keys
    with key_padding_mask False, or after i + Sk - Sq when causal, get -inf; rows with no key left
    give 0. dropout_p > 0 drops probabilities per `dropout_keep_mask(dropout_seed)` and scales the
    rest by 1 / (1 - dropout_p); dropout_seed None draws one like `attention` does. dropout_keep (bool,
    broadcastable to [B, H, Sq, Sk]) replaces that Philox mask (varlen_attention_ref passes slices of its own).
    """
    batch, heads, seq_q, head_dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    scale = default_scale(head_dim) if scale is None else scale
    acc = _backends.accumulation_dtype(q.dtype)
    k = k.repeat_interleave(heads // heads_kv, dim=1)  # [B, H, Sk, D]
    v = v.repeat_interleave(heads // heads_kv, dim=1)
    scores = (torch.matmul(q, k.transpose(-1, -2)) * scale).to(acc)  # [B, H, Sq, Sk]
    keep = torch.ones((1, 1, seq_q, seq_k), dtype=torch.bool, device=q.device)
    if isinstance(attn_bias, T5RelativeBias):
        scores = scores + attn_bias.materialize(seq_q, seq_k).to(acc)
    elif attn_bias is not None and attn_bias.dtype == torch.bool:
        keep = keep & attn_bias
    elif attn_bias is not None:
        scores = scores + attn_bias.to(acc)
    if key_padding_mask is not None:
        keep = keep & key_padding_mask[:, None, None, :]
    if causal:
        i = torch.arange(seq_q, device=q.device)[:, None]
        j = torch.arange(seq_k, device=q.device)[None, :]
        keep = keep & (j <= i + seq_k - seq_q)
    scores = scores.masked_fill(~keep, float("-inf"))
    # Rows with no finite score get probability 0 (and a zero gradient), not softmax's NaN.
    any_kept = (scores > float("-inf")).any(dim=-1, keepdim=True)
    probs = torch.softmax(torch.where(any_kept, scores, 0.0), dim=-1)
    probs = torch.where(any_kept, probs, 0.0)
    if dropout_p > 0.0:
        if dropout_keep is None:
            seed = draw_dropout_seed() if dropout_seed is None else dropout_seed
            dropout_keep = dropout_keep_mask(seed, dropout_p, batch, heads, seq_q, seq_k, q.device)
        probs = torch.where(dropout_keep, probs * (1.0 / (1.0 - dropout_p)), 0.0)
    return torch.matmul(probs.to(v.dtype), v)


# ---- validation -----------------------------------------------------------------------------------

def check_qkv_tensors(q, k, v, q_layout: str = "[B, H, Sq, D]", kv_layout: str = "[B, Hkv, Sk, D]") -> None:
    """q, k, v are tensors of the layouts' rank (e.g. "[B, H, Sq, D]": 4), one float dtype, one device."""
    for name, t, layout in (("q", q, q_layout), ("k", k, kv_layout), ("v", v, kv_layout)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        rank = layout.count(",") + 1
        if t.dim() != rank:
            raise ValueError(f"{name} must be {rank}-D ({layout}), got shape {tuple(t.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be float16, bfloat16, float32 or float64, got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}), got {t.device}")


def _check_qkv(q, k, v) -> None:
    check_qkv_tensors(q, k, v)
    batch, heads, _, head_dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [B, Hkv, Sk, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != batch or k.shape[3] != head_dim:
        raise ValueError(f"k must have shape [B={batch}, Hkv, Sk, D={head_dim}] to match q {tuple(q.shape)}, "
                         f"got {tuple(k.shape)}")
    if k.shape[1] == 0 or heads % k.shape[1] != 0:
        raise ValueError(f"the heads of q (H={heads}) must be a multiple of the heads of k and v "
                         f"(Hkv={k.shape[1]}) for grouped-query attention")
    if head_dim == 0:
        raise ValueError(f"q, k and v must have a head dim D >= 1, got q {tuple(q.shape)}")


def default_scale(head_dim: int) -> float:
    """The scores' scale when none is given, 1/sqrt(D), as every backend and the fused blocks compute it (1 / sqrt
    rather than D ** -0.5: not always the same float)."""
    return 1.0 / math.sqrt(head_dim)


def _check_options(causal, scale, dropout_p, head_dim: int) -> float:
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if scale is None:
        return default_scale(head_dim)
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number or None, got {scale!r}")
    return float(scale)


def _check_bias(attn_bias, q: Tensor, seq_k: int):
    """(dense float bias in q's dtype or float32, broadcastable to [B, H, Sq, Sk], or None;
    T5RelativeBias or None)."""
    batch, heads, seq_q, _ = q.shape
    if attn_bias is None:
        return None, None
    if isinstance(attn_bias, T5RelativeBias):
        if attn_bias.num_heads != heads:
            raise ValueError(f"attn_bias (T5RelativeBias) table has {attn_bias.num_heads} heads, q has H={heads}")
        if attn_bias.table.device != q.device:
            raise ValueError(f"attn_bias (T5RelativeBias) table must be on the device of q ({q.device}), "
                             f"got {attn_bias.table.device}")
        return None, attn_bias
    if not isinstance(attn_bias, Tensor):
        raise TypeError(f"attn_bias must be a torch.Tensor, a T5RelativeBias or None, got {type(attn_bias).__name__}")
    if attn_bias.device != q.device:
        raise ValueError(f"attn_bias must be on the device of q ({q.device}), got {attn_bias.device}")
    target = (batch, heads, seq_q, seq_k)
    shape = tuple(attn_bias.shape)
    if len(shape) > 4 or any(s not in (1, t) for s, t in zip(reversed(shape), reversed(target))):
        raise ValueError(f"attn_bias must be broadcastable to [B, H, Sq, Sk] = {list(target)}, got {list(shape)}")
    if attn_bias.dtype == torch.bool:
        # SDPA's convention for bool masks: True = attend.
        attn_bias = torch.zeros(shape, dtype=q.dtype, device=q.device).masked_fill_(~attn_bias, float("-inf"))
    elif attn_bias.dtype not in _DTYPES:
        raise TypeError(f"attn_bias must be a float (additive) or bool tensor, got {attn_bias.dtype}")
    elif attn_bias.dtype not in (q.dtype, torch.float32):
        attn_bias = attn_bias.to(q.dtype)  # the kernels read the dtype of q or float32
    return attn_bias, None


def _check_key_padding_mask(mask, q: Tensor, seq_k: int):
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"key_padding_mask must be a bool torch.Tensor or None, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be a bool tensor (True = attend), got {mask.dtype}")
    if tuple(mask.shape) != (q.shape[0], seq_k):
        raise ValueError(f"key_padding_mask must have shape [B, Sk] = {[q.shape[0], seq_k]}, got {list(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"key_padding_mask must be on the device of q ({q.device}), got {mask.device}")
    return mask.contiguous()


def _choose_backend(backend, q: Tensor) -> str:
    chosen = _backends.resolve("attention", backend, q.device, q.dtype)
    if q.dtype == torch.float64 and q.device.type == "cuda" and chosen == "triton":
        # Unlike the row kernels, Triton attention needs tl.dot, which has no fp64 on GPUs.
        raise TypeError("float64 attention runs on CPU tensors (or backend='reference'), not with the triton "
                        "backend on CUDA")
    return chosen


# ---- public op ------------------------------------------------------------------------------------

def attention(q, k, v, attn_bias=None, key_padding_mask=None, causal=False, scale=None, dropout_p=0.0,
              backend=None):
    """softmax(scale * q k^T + attn_bias, masked) v, fused: the [Sq, Sk] scores are never materialized.

    q [B, H, Sq, D]; k, v [B, Hkv, Sk, D] with H % Hkv == 0 (grouped/multi-query heads); fp16, bf16,
    fp32 (fp64 on CPU); any D >= 1 (fastformer/ops/_head_dim.py: GPU backends pad D to their tiles and
    fall back to the reference path above GPU_MAX_HEAD_DIM = 256, warning once); any strides with the last dim contiguous (other layouts are
    copied). Returns out [B, H, Sq, D] in q's dtype.
    attn_bias: additive float tensor broadcastable to [B, H, Sq, Sk] (may require grad), bool tensor
      (True = attend, like SDPA), or T5RelativeBias (computed in the kernel; its table gets gradients).
    key_padding_mask: bool [B, Sk], True = attend. causal: query i sees key j iff j <= i + Sk - Sq
      (bottom-right aligned, as KV-cache decoding needs). Rows that see no key give zeros, never NaN.
    scale: default 1/sqrt(D). dropout_p: drops probabilities with a Philox mask seeded from torch's
      default generator (torch.manual_seed makes it reproducible); the seed is drawn eagerly, so
      dropout > 0 graph-breaks torch.compile(fullgraph=True).
    backend: "triton", "cuda", "cpu", "reference" or None (see fastformer._backends). The CUDA backend
      has no backward kernel: training with it runs the Triton backward on its out/lse.
    """
    _check_qkv(q, k, v)
    batch, heads, seq_q, head_dim = q.shape
    seq_k = k.shape[2]
    scale = _check_options(causal, scale, dropout_p, head_dim)
    dense_bias, t5_bias = _check_bias(attn_bias, q, seq_k)
    key_padding_mask = _check_key_padding_mask(key_padding_mask, q, seq_k)
    chosen = _head_dim.backend_for_head_dim(_choose_backend(backend, q), head_dim)
    seed = draw_dropout_seed() if dropout_p > 0.0 else 0
    if chosen == "reference":
        return attention_ref(q, k, v, t5_bias if t5_bias is not None else dense_bias, key_padding_mask, causal,
                             scale, dropout_p, dropout_seed=seed)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    if dense_bias is not None:
        # Stride 0 where broadcast; autograd of expand sums the kernels' [B, H, Sq, Sk] gradient back.
        dense_bias = dense_bias.expand(batch, heads, seq_q, seq_k)
    rel_table, rel_lut, bidirectional = (None, None, False)
    if t5_bias is not None:
        rel_table, rel_lut, bidirectional = t5_bias.table, t5_bias.lut(), t5_bias.bidirectional
    if chosen == "cuda":
        q, k, v = (_head_dim.pad_head_dim(t, _head_dim.cuda_tile(head_dim)) for t in (q, k, v))
    fwd_op = _attention.FWD_OPS["triton" if chosen == "triton" else "cpp"]
    out, _lse = _dispatch.call(fwd_op, q, k, v, dense_bias, key_padding_mask, rel_table, rel_lut, bidirectional,
                               causal, scale, float(dropout_p), seed, grad_inputs=(q, k, v, dense_bias, rel_table))
    return out if out.shape[-1] == head_dim else out[..., :head_dim].contiguous()  # [B, H, Sq, D]
