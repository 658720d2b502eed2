// fastformer._C: build facts for Python (pybind11) and the schema of every op (TORCH_LIBRARY).
//
// Each op's kernels register for the CPU key in csrc/cpu/ and for the CUDA key in csrc/cuda/;
// Python adds fake (meta) impls and autograd in fastformer/ops/. The Triton kernels register
// ops with the same schemas under the suffix "_triton" (fastformer/ops/*.py).
//
// Tensor ranks the kernels see (the functional wrappers reshape to these):
//   norms:   x, residual [rows, N], last dim contiguous, any row stride; weight, bias [N].
//   softmax: x [A, B, M, N] (last dim contiguous), mask expanded to [A, B, M, N] (stride 0 where
//            broadcast), bool or additive (x.dtype or float32); causal keeps key j for row i iff
//            j <= i + N - M (bottom-right aligned).
//   attention: q [B, H, Sq, D], k, v [B, Hkv, Sk, D] (H % Hkv == 0), last dim contiguous, any other
//            strides (views of a fused QKV projection need no copy). out [B, H, Sq, D] contiguous,
//            lse [B, H, Sq] fp32 = natural log of the softmax denominator of the scaled, biased,
//            masked scores; a row with no kept key has out = 0 and lse = +inf (so exp(s - lse) = 0
//            in backward). attn_bias is expanded to [B, H, Sq, Sk] (stride 0 where broadcast; dtype
//            of q or float32). key_padding_mask bool [B, Sk], True = attend. causal: query i keeps
//            key j iff j <= i + Sk - Sq (bottom-right aligned).
//            T5 relative bias (never materialized): rel_table [num_buckets, H] (float), rel_lut int32
//            [L]: with rel = j - (i + Sk - Sq), n = |rel| if bidirectional else max(-rel, 0),
//            bucket = rel_lut[min(n, L - 1)] + (bidirectional && rel > 0 ? num_buckets / 2 : 0),
//            bias = rel_table[bucket, h].
//            Scores: s = scale * q.k + attn_bias + T5 bias, masked keys -inf. Dropout (p > 0): element
//            (b, h, i, j) of the probabilities is kept iff philox_uniform(seed, ((b*H + h)*Sq + i)*Sk + j)
//            >= p and kept values are scaled by 1/(1-p); philox_uniform is Triton's tl.rand
//            (Philox4x32-10), so every backend drops the same elements (fastformer/ops/_philox.py is
//            the PyTorch reference). The backward ops of all backends accept any backend's out/lse.
//            attention_bwd's grad_bias is the gradient of the expanded [B, H, Sq, Sk] bias (autograd
//            reduces it to the bias's own shape); grad_rel_table has the shape of rel_table.
//   varlen_attention: packed sequences (flash-attn's varlen layout): q [Tq, H, D], k, v [Tk, Hkv, D], last
//            dim contiguous; cu_seqlens_q/k int32 [B + 1] from 0, non-decreasing, ending at Tq / Tk; sequence
//            b is rows cu[b]:cu[b + 1], no longer than max_seqlen_q / max_seqlen_k. Each sequence is the
//            attention above on its own rows (causal and T5 positions per sequence). out [Tq, H, D], lse
//            [Tq, H] fp32. Dropout numbers element (b, h, i, j) as the padded op does with Sq = max_seqlen_q,
//            Sk = max_seqlen_k and i, j shifted by max_seqlen - the sequence's length (left padding).
//            CPU only: GPU backends run the padded op (fastformer/ops/varlen_attention.py).
//   decode_block: one pre-norm block (GPT-2's) for one new token of batch 1, CPU fp32 inference: x [1, hidden];
//            keys, values [1, H, max_length, D] (one layer's KV cache, written at slot `length`); key_padding_mask
//            bool [1, length + 1]; qkv_weight [3 H D, hidden] (q, k, v rows in that order), out_weight [hidden,
//            H D], up_weight [I, hidden], down_weight [hidden, I]; activation one of gelu, gelu_tanh, relu, silu;
//            rms picks RMSNorm (biases ignored) over LayerNorm. Returns the block's output [1, hidden]
//            (csrc/cpu/decode_block.cpp spells out the sequence).
//   encoder_block: one post-norm encoder block (BERT's), CPU inference: x [B, S, hidden] (key_padding_mask bool
//            [B, S] or none) or the packed real tokens [T, hidden] with cu_seqlens int32 [B + 1] and max_seqlen;
//            weights, biases, weight_scales: the qkv (rows q, k, v), out, up and down linears' [N, K], [N] or none,
//            [N] or none; a linear with a scale is int8 (int8 weight, ff.nn.Int8Linear's product, int8_max_crest),
//            else oneDNN's (weight plain or packed by torch.ops.mkldnn._reorder_linear_weight, ff.nn.Linear's
//            cache); activation (after up) one of gelu, gelu_tanh, relu, silu; LayerNorm with eps. Returns the
//            block's output, x's shape (csrc/cpu/encoder_block.cpp spells out the sequence).
//   encoder_blocks: every block of an encoder stack in one call, as encoder_block on each in turn: block b's
//            linears at 4b..4b+3 of weights, biases, weight_scales, its norms at 2b, 2b+1 of norm_weights and
//            norm_biases, its head count, activation, eps and scale at b. Returns each block's output.
//   pack_panels: weight [N, K] fp32 (N a multiple of 16), CPU only -> panels [N / 16, K, 16] (output columns
//            16p..16p+15 in panel p, one 64-byte line per k).
//   panel_linear: x [..., K] fp32 contiguous, panels from pack_panels, bias [N] or none, activation one of none,
//            gelu, gelu_tanh, relu, silu; CPU only: act(x W^T + b) [..., N], the linear of a few rows
//            (csrc/cpu/panel_linear.cpp).
//   gemv: x [K] contiguous, weight [N, K] last dim contiguous (any row stride), bias [N] contiguous or none,
//            all fp32 or all bf16, CPU only: y [N] = weight @ x + bias (the single-row linear of batch-1 decoding).
//   gemv_int8: x [K] fp32, weight_int8 [N, K] int8, weight_scale [N] and bias [N] (or none) fp32, CPU only:
//            y [N] = weight_scale * (weight_int8 @ x) + bias (ff.nn.Int8Linear's single rows, weight-only).
// Optional outputs that do not apply (residual_out without residual, grad_weight without weight,
// grad_bias without bias_needs_grad, grad_rel_table without rel_table) come back as empty tensors,
// so every schema has a fixed number of results.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef FASTFORMER_WITH_CUDA
#define FASTFORMER_WITH_CUDA 0
#endif
#ifdef CPU_CAPABILITY_AVX2
#define FASTFORMER_CPU_ISA "avx2"
#else
#define FASTFORMER_CPU_ISA "default"
#endif

TORCH_LIBRARY(fastformer, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor grad_out, Tensor? grad_residual_out, Tensor normed_input, Tensor? weight,"
        " Tensor mean, Tensor rstd, bool has_bias) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def("rms_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor grad_out, Tensor? grad_residual_out, Tensor normed_input, Tensor? weight,"
        " Tensor rstd) -> (Tensor grad_x, Tensor grad_weight)");
  m.def("softmax_fwd(Tensor x, Tensor? mask, float scale, bool causal) -> Tensor");
  m.def("softmax_bwd(Tensor grad_out, Tensor out, float scale) -> Tensor");
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? attn_bias, Tensor? key_padding_mask,"
        " Tensor? rel_table, Tensor? rel_lut, bool rel_bidirectional, bool causal, float scale,"
        " float dropout_p, int seed) -> (Tensor out, Tensor lse)");
  m.def("attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? attn_bias,"
        " Tensor? key_padding_mask, Tensor? rel_table, Tensor? rel_lut, bool rel_bidirectional, bool causal,"
        " float scale, float dropout_p, int seed, bool bias_needs_grad)"
        " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_bias, Tensor grad_rel_table)");
  m.def("varlen_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k,"
        " SymInt max_seqlen_q, SymInt max_seqlen_k, Tensor? rel_table, Tensor? rel_lut, bool rel_bidirectional,"
        " bool causal, float scale, float dropout_p, int seed) -> (Tensor out, Tensor lse)");
  m.def("varlen_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse,"
        " Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, Tensor? rel_table,"
        " Tensor? rel_lut, bool rel_bidirectional, bool causal, float scale, float dropout_p, int seed)"
        " -> (Tensor grad_q, Tensor grad_k, Tensor grad_v, Tensor grad_rel_table)");
  m.def("gemv(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("pack_panels(Tensor weight) -> Tensor");
  m.def("panel_linear(Tensor x, Tensor panels, Tensor? bias, str activation) -> Tensor");
  m.def("gemv_int8(Tensor x, Tensor weight_int8, Tensor weight_scale, Tensor? bias) -> Tensor");
  m.def("decode_block(Tensor x, Tensor(a!) keys, Tensor(b!) values, int length, Tensor key_padding_mask,"
        " Tensor? norm1_weight, Tensor? norm1_bias, Tensor qkv_weight, Tensor? qkv_bias, Tensor out_weight,"
        " Tensor? out_bias, Tensor? norm2_weight, Tensor? norm2_bias, Tensor up_weight, Tensor? up_bias,"
        " Tensor down_weight, Tensor? down_bias, bool rms, float eps, str activation, float scale) -> Tensor");
  m.def("encoder_block(Tensor x, Tensor? key_padding_mask, Tensor? cu_seqlens, int max_seqlen, int heads,"
        " Tensor[] weights, Tensor?[] biases, Tensor?[] weight_scales, float int8_max_crest, Tensor? norm1_weight,"
        " Tensor? norm1_bias, Tensor? norm2_weight, Tensor? norm2_bias, str activation, float eps, float scale)"
        " -> Tensor");
  m.def("encoder_blocks(Tensor x, Tensor? key_padding_mask, Tensor? cu_seqlens, int max_seqlen, int[] heads,"
        " Tensor[] weights, Tensor?[] biases, Tensor?[] weight_scales, float int8_max_crest, Tensor?[] norm_weights,"
        " Tensor?[] norm_biases, str[] activations, float[] eps, float[] scales) -> Tensor[]");
  // Int8 rows (CPU only; csrc/cpu/int8_rows.cpp): x [M, K] fp32 -> q [M + R, K] int8, scale [M + R], refined
  // [R] (rows whose max/rms > max_crest get a second, residual row); acc [M + R, N] int32 -> fp32 [M, N].
  m.def("quantize_rows_int8(Tensor x, float max_crest) -> (Tensor q, Tensor scale, Tensor refined)");
  m.def("dequantize_rows_int32(Tensor acc, Tensor row_scale, Tensor col_scale, Tensor? bias, Tensor? refined=None)"
        " -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastformer native extension: build facts; the ops live in torch.ops.fastformer";
  m.attr("cuda_built") = bool(FASTFORMER_WITH_CUDA);
  m.attr("cpu_isa") = FASTFORMER_CPU_ISA;
}
