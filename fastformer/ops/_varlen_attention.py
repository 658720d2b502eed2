"""Registration of the packed (varlen) attention ops: fake impls and autograd.

torch.ops.fastformer.varlen_attention_{fwd,bwd} are C++ ops with a CPU kernel only (csrc/cpu/attention.cpp,
schema and contract in csrc/fastformer.cpp); the GPU backends run the padded attention ops instead
(fastformer/ops/varlen_attention.py). The fake impls need no offsets: out is shaped like q, lse is [Tq, H].
"""
import torch

from fastformer.ops._layout import contiguous

_ops = torch.ops.fastformer
FWD_OP = _ops.varlen_attention_fwd.default
BWD_OP = _ops.varlen_attention_bwd.default


@torch.library.register_fake(FWD_OP)
def _fake_fwd(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, rel_table, rel_lut, rel_bidirectional,
              causal, scale, dropout_p, seed):
    return q.new_empty(q.shape), q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)


@torch.library.register_fake(BWD_OP)
def _fake_bwd(grad_out, q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, rel_table, rel_lut,
              rel_bidirectional, causal, scale, dropout_p, seed):
    grad_table = rel_table.new_empty(rel_table.shape) if rel_table is not None else q.new_empty((0,))
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), grad_table


def _setup_context(ctx, inputs, output):
    (q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, rel_table, rel_lut, rel_bidirectional, causal,
     scale, dropout_p, seed) = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, rel_table, rel_lut)
    ctx.options = (max_seqlen_q, max_seqlen_k)
    ctx.score_options = (rel_bidirectional, causal, scale, dropout_p, seed)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k, rel_table, rel_lut = ctx.saved_tensors
    grad_q, grad_k, grad_v, grad_table = BWD_OP(contiguous(grad_out), q, k, v, out, lse, cu_seqlens_q, cu_seqlens_k,
                                                *ctx.options, rel_table, rel_lut, *ctx.score_options)
    return (grad_q, grad_k, grad_v, None, None, None, None, grad_table if ctx.needs_input_grad[7] else None, None,
            None, None, None, None, None)


torch.library.register_autograd(FWD_OP, _backward, setup_context=_setup_context)
