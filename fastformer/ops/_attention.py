"""Registration of the attention ops: the Triton twins of the C++ schemas, fake impls and autograd.

torch.ops.fastformer.attention_{fwd,bwd} are the C++ ops (CPU and CUDA keys, csrc/); the *_triton ops
wrap kernels/attention.py in opaque custom ops with the same schemas, which torch.compile(fullgraph=True)
traces without breaks and which run under TRITON_INTERPRET=1 on CPU tensors. Both forward ops get the
same autograd formula; every backward op accepts any backend's (out, lse), so a CUDA build without a
CUDA backward trains with the Triton backward.
"""
from typing import Optional

import torch
from torch import Tensor

from fastformer._backends import accumulation_dtype
from fastformer.ops._layout import contiguous, last_dim_contiguous
from fastformer.ops._t5_bias import distance_buckets


def _t5_by_distance(rel_table: Tensor, rel_lut: Tensor, bidirectional: bool, seq_q: int, seq_k: int,
                    dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(buckets [Sq + Sk - 1], bias [H, Sq + Sk - 1]) by distance index j - i + Sq - 1: what the Triton
    kernels read instead of [H, Sq, Sk], O(H * (Sq + Sk)) per call."""
    buckets = distance_buckets(rel_lut, rel_table.shape[0], bidirectional, seq_q, seq_k)
    return buckets, rel_table[buckets].t().to(accumulation_dtype(dtype)).contiguous()  # [H, Sq + Sk - 1]


# ---- Triton twins of the C++ ops (same schemas) -------------------------------------------------

@torch.library.custom_op("fastformer::attention_fwd_triton", mutates_args=())
def _attention_fwd_triton(q: Tensor, k: Tensor, v: Tensor, attn_bias: Optional[Tensor],
                          key_padding_mask: Optional[Tensor], rel_table: Optional[Tensor], rel_lut: Optional[Tensor],
                          rel_bidirectional: bool, causal: bool, scale: float, dropout_p: float,
                          seed: int) -> tuple[Tensor, Tensor]:
    from fastformer.kernels import attention as kernels

    dist_bias = None
    if rel_table is not None:
        _, dist_bias = _t5_by_distance(rel_table, rel_lut, rel_bidirectional, q.shape[2], k.shape[2], q.dtype)
    return kernels.attention_fwd(q, k, v, attn_bias, key_padding_mask, dist_bias, causal, scale, dropout_p, seed)


@torch.library.custom_op("fastformer::attention_bwd_triton", mutates_args=())
def _attention_bwd_triton(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                          attn_bias: Optional[Tensor], key_padding_mask: Optional[Tensor], rel_table: Optional[Tensor],
                          rel_lut: Optional[Tensor], rel_bidirectional: bool, causal: bool, scale: float,
                          dropout_p: float, seed: int,
                          bias_needs_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from fastformer.kernels import attention as kernels

    buckets = dist_bias = None
    if rel_table is not None:
        buckets, dist_bias = _t5_by_distance(rel_table, rel_lut, rel_bidirectional, q.shape[2], k.shape[2], q.dtype)
    grad_q, grad_k, grad_v, grad_bias, grad_dist = kernels.attention_bwd(
        last_dim_contiguous(grad_out), q, k, v, last_dim_contiguous(out), contiguous(lse), attn_bias,
        key_padding_mask, dist_bias, causal, scale, dropout_p, seed,
        bias_needs_grad=bias_needs_grad and attn_bias is not None, dist_needs_grad=rel_table is not None)
    if rel_table is None:
        grad_table = q.new_empty((0,))
    else:
        # [H, Sq + Sk - 1] sums by distance -> [num_buckets, H] sums by bucket.
        grad_table = torch.zeros(rel_table.shape, dtype=grad_dist.dtype, device=q.device)
        grad_table = grad_table.index_add_(0, buckets, grad_dist.t()).to(rel_table.dtype)
    return grad_q, grad_k, grad_v, grad_bias, grad_table


_ops = torch.ops.fastformer
FWD_OPS = {"cpp": _ops.attention_fwd.default, "triton": _ops.attention_fwd_triton.default}
BWD_OPS = {"cpp": _ops.attention_bwd.default, "triton": _ops.attention_bwd_triton.default}


def cpp_kernel_registered(op: str, device_type: str) -> bool:
    """Whether the C++ op fastformer::<op> has a kernel for tensors on `device_type` ("cpu"/"cuda")."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"fastformer::{op}", key)


# ---- fake (meta) impls ---------------------------------------------------------------------------

def _fake_fwd(q, k, v, attn_bias, key_padding_mask, rel_table, rel_lut, rel_bidirectional, causal, scale,
              dropout_p, seed):
    batch, heads, seq_q, head_dim = q.shape
    return q.new_empty((batch, heads, seq_q, head_dim)), q.new_empty((batch, heads, seq_q), dtype=torch.float32)


def _fake_bwd(grad_out, q, k, v, out, lse, attn_bias, key_padding_mask, rel_table, rel_lut, rel_bidirectional,
              causal, scale, dropout_p, seed, bias_needs_grad):
    batch, heads, seq_q, _ = q.shape
    if bias_needs_grad and attn_bias is not None:
        grad_bias = attn_bias.new_empty((batch, heads, seq_q, k.shape[2]))
    else:
        grad_bias = q.new_empty((0,))
    grad_table = rel_table.new_empty(rel_table.shape) if rel_table is not None else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_bias, grad_table


for _backend in ("cpp", "triton"):
    torch.library.register_fake(FWD_OPS[_backend])(_fake_fwd)
    torch.library.register_fake(BWD_OPS[_backend])(_fake_bwd)


# ---- autograd ------------------------------------------------------------------------------------

def _setup_context(ctx, inputs, output):
    q, k, v, attn_bias, key_padding_mask, rel_table, rel_lut, rel_bidirectional, causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, attn_bias, key_padding_mask, rel_table, rel_lut)
    ctx.options = (rel_bidirectional, causal, scale, dropout_p, seed)


def _backward_op(backend: str, device: torch.device):
    if backend == "cpp" and device.type == "cuda" and not cpp_kernel_registered("attention_bwd", "cuda"):
        return BWD_OPS["triton"]  # the lse/out conventions are shared, so the Triton backward fits
    return BWD_OPS[backend]


def _make_backward(backend: str):
    def backward(ctx, grad_out, _grad_lse):
        q, k, v, out, lse, attn_bias, key_padding_mask, rel_table, rel_lut = ctx.saved_tensors
        bias_needs_grad = ctx.needs_input_grad[3]
        grad_q, grad_k, grad_v, grad_bias, grad_table = _backward_op(backend, q.device)(
            contiguous(grad_out), q, k, v, out, lse, attn_bias, key_padding_mask, rel_table, rel_lut,
            *ctx.options, bias_needs_grad)
        return (grad_q, grad_k, grad_v, grad_bias if bias_needs_grad else None, None,
                grad_table if ctx.needs_input_grad[5] else None, None, None, None, None, None, None)

    return backward


for _backend in ("cpp", "triton"):
    torch.library.register_autograd(FWD_OPS[_backend], _make_backward(_backend), setup_context=_setup_context)
