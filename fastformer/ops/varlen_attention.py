"""ff.ops.varlen_attention: attention over a packed batch of variable-length sequences.

flash-attn's `flash_attn_varlen_func` convention: the sequences of a batch are concatenated along the token
axis, q [Tq, H, D], k, v [Tk, Hkv, D] (H % Hkv == 0), and sequence b is rows cu_seqlens[b]:cu_seqlens[b + 1]
(int32 [B + 1] cumulative offsets starting at 0). Each sequence attends only to its own keys, so a batch of
lengths 16..128 costs the sum of its sequences' work, not B x 128 x 128.

Semantics (`varlen_attention_ref`): ff.ops.attention run on every sequence alone, q [1, H, Sq_b, D]
against k, v [1, Hkv, Sk_b, D]: causal is bottom-right aligned within each sequence and a T5RelativeBias
measures positions within each sequence. Equivalently, ff.ops.attention on the batch left-padded to
[B, H, max_seqlen_q, D] and [B, Hkv, max_seqlen_k, D] with the padded keys masked (left padding keeps both
alignments), and that padded batch also defines dropout: element (b, h, i, j) of sequence b survives iff
element (b, h, i + max_seqlen_q - Sq_b, j + max_seqlen_k - Sk_b) of ff.ops.attention's Philox mask over
[B, H, max_seqlen_q, max_seqlen_k] does, so the seed numbering is the same on every backend.
"""
import torch
from torch import Tensor

from fastformer.ops import _dispatch, _varlen_attention
from fastformer.ops._layout import last_dim_contiguous
from fastformer.ops.attention import (T5RelativeBias, _check_options, _choose_backend, attention, attention_ref,
                                      check_qkv_tensors, draw_dropout_seed, dropout_keep_mask)

__all__ = ["varlen_attention", "varlen_attention_ref"]


# ---- semantics ------------------------------------------------------------------------------------

def varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias=None,
                         causal=False, scale=None, dropout_p=0.0, dropout_seed=None):
    """The documented semantics in plain PyTorch: attention_ref on each sequence alone (a Python loop that
    reads cu_seqlens on the host). Run it in fp64 for a reference; dropout_seed None draws one."""
    heads, head_dim = q.shape[1], q.shape[2]
    starts_q, starts_k = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    batch = len(starts_q) - 1
    keep = None
    if dropout_p > 0.0:
        seed = draw_dropout_seed() if dropout_seed is None else dropout_seed
        keep = dropout_keep_mask(seed, dropout_p, batch, heads, max_seqlen_q, max_seqlen_k, q.device)
    outs = []
    for b in range(batch):
        q_b = q[starts_q[b]:starts_q[b + 1]].transpose(0, 1).unsqueeze(0)  # [1, H, Sq_b, D]
        k_b = k[starts_k[b]:starts_k[b + 1]].transpose(0, 1).unsqueeze(0)  # [1, Hkv, Sk_b, D]
        v_b = v[starts_k[b]:starts_k[b + 1]].transpose(0, 1).unsqueeze(0)
        keep_b = None
        if keep is not None:  # the bottom-right [Sq_b, Sk_b] corner of sequence b's padded block
            keep_b = keep[b:b + 1, :, max_seqlen_q - q_b.shape[2]:, max_seqlen_k - k_b.shape[2]:]
        out_b = attention_ref(q_b, k_b, v_b, attn_bias, None, causal, scale, dropout_p, dropout_keep=keep_b)
        outs.append(out_b[0].transpose(0, 1))  # [Sq_b, H, D]
    return torch.cat(outs) if outs else q[:0].clone()  # no sequences: [0, H, D], still in q's autograd graph


# ---- validation -----------------------------------------------------------------------------------

def _check_qkv(q, k, v) -> None:
    check_qkv_tensors(q, k, v, "[Tq, H, D]", "[Tk, Hkv, D]")
    heads, head_dim = q.shape[1], q.shape[2]
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape [Tk, Hkv, D], got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[2] != head_dim:
        raise ValueError(f"k must have shape [Tk, Hkv, D={head_dim}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    if k.shape[1] == 0 or heads % k.shape[1] != 0:
        raise ValueError(f"the heads of q (H={heads}) must be a multiple of the heads of k and v "
                         f"(Hkv={k.shape[1]}) for grouped-query attention")
    if head_dim == 0:
        raise ValueError(f"q, k and v must have a head dim D >= 1, got q {tuple(q.shape)}")


def _check_max_seqlen(max_seqlen, name: str) -> None:
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, (int, torch.SymInt)):
        raise TypeError(f"{name} must be a Python int (an input, so that no host sync is needed), "
                        f"got {type(max_seqlen).__name__}")
    if max_seqlen < 0:
        raise ValueError(f"{name} must be >= 0, got {max_seqlen}")


def _check_cu_seqlens(cu_seqlens, name: str, q: Tensor) -> None:
    if not isinstance(cu_seqlens, Tensor):
        raise TypeError(f"{name} must be an int32 torch.Tensor [B + 1], got {type(cu_seqlens).__name__}")
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"{name} must be int32 (flash-attn's convention), got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 1:
        raise ValueError(f"{name} must be 1-D [B + 1] with B >= 0, got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"{name} must be on the device of q ({q.device}), got {cu_seqlens.device}")


def _check_lengths(cu_seqlens: Tensor, name: str, total: int, tensor_name: str, max_seqlen: int,
                   max_name: str) -> None:
    """The checks that read the offsets: only where that is free (a CPU tensor, eager), never a host sync."""
    if cu_seqlens.device.type != "cpu" or torch.compiler.is_compiling() or cu_seqlens.is_meta:
        return
    offsets = cu_seqlens.tolist()
    if offsets[0] != 0:
        raise ValueError(f"{name} must start at 0, got {name}[0] = {offsets[0]}")
    lengths = [end - start for start, end in zip(offsets, offsets[1:])]
    if any(length < 0 for length in lengths):
        raise ValueError(f"{name} must be non-decreasing (sequence lengths >= 0), got {offsets}")
    if offsets[-1] != total:
        raise ValueError(f"{name}[-1] = {offsets[-1]} must equal the number of rows of {tensor_name} ({total})")
    if lengths and max(lengths) > max_seqlen:
        raise ValueError(f"{max_name} = {max_seqlen} is less than the longest sequence in {name} ({max(lengths)})")


def _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias) -> None:
    _check_qkv(q, k, v)
    _check_cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q)
    _check_cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must hold the same number of sequences, got shapes "
                         f"{tuple(cu_seqlens_q.shape)} and {tuple(cu_seqlens_k.shape)}")
    _check_max_seqlen(max_seqlen_q, "max_seqlen_q")
    _check_max_seqlen(max_seqlen_k, "max_seqlen_k")
    _check_lengths(cu_seqlens_q, "cu_seqlens_q", q.shape[0], "q", max_seqlen_q, "max_seqlen_q")
    _check_lengths(cu_seqlens_k, "cu_seqlens_k", k.shape[0], "k", max_seqlen_k, "max_seqlen_k")
    if attn_bias is None:
        return
    if not isinstance(attn_bias, T5RelativeBias):
        raise TypeError(f"attn_bias of varlen_attention must be a T5RelativeBias or None (a dense bias has no "
                        f"packed layout), got {type(attn_bias).__name__}")
    if attn_bias.num_heads != q.shape[1]:
        raise ValueError(f"attn_bias (T5RelativeBias) table has {attn_bias.num_heads} heads, q has H={q.shape[1]}")
    if attn_bias.table.device != q.device:
        raise ValueError(f"attn_bias (T5RelativeBias) table must be on the device of q ({q.device}), "
                         f"got {attn_bias.table.device}")


# ---- padded path (GPU backends) -------------------------------------------------------------------

def _pad_left(x: Tensor, cu_seqlens: Tensor, max_seqlen: int) -> tuple[Tensor, Tensor]:
    """x [T, H, D] -> ([B, H, S, D] with sequence b in the last Sk_b slots, S = max_seqlen; real [B, S] bool).

    The slots before a sequence hold copies of some real row instead of zeros (no copy of x to append a zero
    row): they are masked keys or discarded queries, whose gradients are exactly 0.
    """
    positions = torch.arange(max_seqlen, device=x.device)  # [S]
    rows = cu_seqlens[1:, None].long() - max_seqlen + positions  # [B, S]: the row of x in each slot
    real = rows >= cu_seqlens[:-1, None]  # [B, S]
    source = x if x.shape[0] > 0 else x.new_zeros((1, *x.shape[1:]))
    return source[rows.clamp(0, source.shape[0] - 1)].transpose(1, 2), real  # [B, H, S, D]


def _unpad_left(out: Tensor, cu_seqlens: Tensor, total: int) -> Tensor:
    """The inverse of _pad_left on the real rows: [B, H, S, D] -> [T, H, D]."""
    batch, heads, seq, head_dim = out.shape
    ends = cu_seqlens[1:].long()  # [B]
    tokens = torch.arange(total, device=out.device)  # [T]
    sequence = torch.bucketize(tokens, ends, right=True)  # [T]: b with cu[b] <= t < cu[b + 1]
    slots = sequence * seq + seq - ends[sequence] + tokens  # [T]: row of the flattened [B * S] slots
    return out.transpose(1, 2).reshape(batch * seq, heads, head_dim)[slots]


def _padded_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias, causal, scale,
                      dropout_p, backend) -> Tensor:
    """ff.ops.attention on the left-padded batch, unpacked: the documented equivalence, run as is."""
    q_pad, _ = _pad_left(q, cu_seqlens_q, max_seqlen_q)  # [B, H, Sq, D]
    k_pad, key_real = _pad_left(k, cu_seqlens_k, max_seqlen_k)  # [B, Hkv, Sk, D], [B, Sk]
    v_pad, _ = _pad_left(v, cu_seqlens_k, max_seqlen_k)
    out = attention(q_pad, k_pad, v_pad, attn_bias, key_real, causal, scale, dropout_p, backend)
    return _unpad_left(out, cu_seqlens_q, q.shape[0])  # [Tq, H, D]


# ---- public op ------------------------------------------------------------------------------------

def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias=None,
                     causal=False, scale=None, dropout_p=0.0, backend=None):
    """Attention of each packed sequence over its own keys; returns out [Tq, H, D] in q's dtype.

    q [Tq, H, D], k, v [Tk, Hkv, D] (H % Hkv == 0, fp16/bf16/fp32, fp64 on CPU, any D >= 1); sequence b is
    rows cu_seqlens_q[b]:cu_seqlens_q[b + 1] of q and cu_seqlens_k[b]:cu_seqlens_k[b + 1] of k and v
    (int32 [B + 1], from 0; empty sequences allowed). max_seqlen_q/k: Python ints >= every length (inputs,
    so nothing reads the offsets back from a GPU; on CPU tensors the offsets are checked).
    attn_bias: None or a T5RelativeBias (positions within each sequence; its table gets gradients).
    causal: query i of a sequence sees key j iff j <= i + Sk_b - Sq_b (bottom-right aligned, as in
    ff.ops.attention). scale: default 1/sqrt(D). dropout_p: see the module docstring; like
    ff.ops.attention it draws its seed eagerly, so dropout > 0 graph-breaks torch.compile(fullgraph=True).
    backend: as ff.ops.attention's. On CPU tensors the C++ kernel runs the packed rows directly (no padding
    is computed; any strides with the last dim contiguous). On GPUs (triton, cuda) it runs ff.ops.attention
    on the left-padded batch and unpacks (GPU speed of the packed layout is not a goal yet).
    """
    _check_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias)
    scale = _check_options(causal, scale, dropout_p, q.shape[2])
    chosen = _choose_backend(backend, q)
    if chosen == "reference":  # each path draws one dropout seed from torch's default generator
        return varlen_attention_ref(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias,
                                    causal, scale, dropout_p)
    if chosen != "cpu":
        return _padded_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, attn_bias, causal,
                                 scale, dropout_p, chosen)
    q, k, v = (last_dim_contiguous(t) for t in (q, k, v))
    rel_table, rel_lut, bidirectional = (None, None, False)
    if attn_bias is not None:
        rel_table, rel_lut, bidirectional = attn_bias.table, attn_bias.lut(), attn_bias.bidirectional
    seed = draw_dropout_seed() if dropout_p > 0.0 else 0
    out, _lse = _dispatch.call(_varlen_attention.FWD_OP, q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                               max_seqlen_k, rel_table, rel_lut, bidirectional, causal, scale, float(dropout_p), seed,
                               grad_inputs=(q, k, v, rel_table))
    return out  # [Tq, H, D]
