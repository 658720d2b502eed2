// One post-norm encoder block (BERT's, RoBERTa's, DistilBERT's) on CPU, for inference, in one call: the whole block
// of an encoder forward, dense or packed (padding removed).
//
// No new math, as in decode_block.cpp: the block runs the kernels the Python block calls one by one (oneDNN's
// prepacked linear with its fused activation, attention_fwd or varlen_attention_fwd, layer_norm_fwd) in the same
// order on the same data, so its output is the Python block's bit for bit. What it removes is the Python between
// them, which dominates small inputs: measured on the 2-core AVX-512 development VM, all-MiniLM-L6-v2 on one
// 18-token sentence (1 thread) ran its 6 blocks in 6.7-6.9 ms through the modules and 5.6 ms as the same op calls
// written flat, with the difference (~200 us a block) spent in module calls, argument checks and backend choice.
//
// Per block, with x [B, S, hidden] (dense; key_padding_mask bool [B, S] or none) or [T, hidden] (packed: the real
// tokens, sequence b rows cu_seqlens[b]:cu_seqlens[b + 1]); each linear either oneDNN's (its weight plain or packed
// by torch.ops.mkldnn._reorder_linear_weight) or int8 (int8 weight and per-channel scales, as ff.nn.Int8Linear):
//   q, k, v = split(linear(x, W_qkv, b_qkv))        [..., 3, H, D] views, no copies
//   a = attention(q, k, v) over each sequence's own keys
//   x = LayerNorm1(x + linear(a, W_out, b_out))
//   x = LayerNorm2(x + linear(act(linear(x, W_up, b_up)), W_down, b_down))    act fused into a oneDNN up product
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <vector>

#include "cpu/block_ops.h"

namespace fastformer::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

using block_ops::Activation;

// One block's parameters: linears qkv, out, up, down (each oneDNN's packed or plain float weight, or int8 with a
// per-channel scale), the two norms, its head count, activation, eps and attention scale.
struct BlockParams {
  at::TensorList weights;  // 4
  std::array<OptTensor, 4> biases, scales;
  OptTensor norm1_weight, norm1_bias, norm2_weight, norm2_bias;
  int64_t heads;
  Activation up_activation;
  double eps, scale;
};

// The block whose linears are at first..first+3 of weights, biases and scales (one block's lists: first = 0).
BlockParams block_params(at::TensorList weights, const c10::List<OptTensor>& biases,
                         const c10::List<OptTensor>& scales, size_t first, const OptTensor& norm1_weight,
                         const OptTensor& norm1_bias, const OptTensor& norm2_weight, const OptTensor& norm2_bias,
                         int64_t heads, const Activation& up_activation, double eps, double scale) {
  return {weights.slice(first, 4),
          {biases.get(first), biases.get(first + 1), biases.get(first + 2), biases.get(first + 3)},
          {scales.get(first), scales.get(first + 1), scales.get(first + 2), scales.get(first + 3)},
          norm1_weight, norm1_bias, norm2_weight, norm2_bias, heads, up_activation, eps, scale};
}

// Linear i of the block: int8 where it has a weight scale, fastformer's few-row product where its weight is packed
// in panels (3-D), else oneDNN's product; `activation` fused into the latter two.
Tensor linear(const Tensor& x, const BlockParams& p, int i, double max_crest, const Activation* activation = nullptr) {
  if (p.scales[i]) {
    Tensor y = block_ops::int8_linear(x, p.weights[i], *p.scales[i], p.biases[i], max_crest);
    return activation ? activation->apply(y) : y;
  }
  if (p.weights[i].dim() == 3)
    return block_ops::panel_linear(x, p.weights[i], p.biases[i], activation ? activation->name : "none");
  return block_ops::packed_linear(x, p.weights[i], p.biases[i], activation ? activation->post_op : "none",
                                  activation ? activation->algorithm : "");
}

// The block on x (checked by the caller: contiguous, [T, hidden] with cu_seqlens, else [B, S, hidden]).
Tensor run_block(const Tensor& x, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens, int64_t max_seqlen,
                 const BlockParams& p, double int8_max_crest) {
  const bool packed = cu_seqlens.has_value();
  const int64_t hidden = x.size(-1), rows = x.numel() / hidden, heads = p.heads;
  const auto product = [&](const Tensor& input, int i, const Activation* act = nullptr) {
    return linear(input, p, i, int8_max_crest, act);
  };

  const Tensor qkv = product(x, 0);  // [..., 3 H D]
  TORCH_CHECK(qkv.size(-1) % (3 * heads) == 0, "encoder_block: the qkv weight's ", qkv.size(-1),
              " outputs do not split into q, k, v of ", heads, " heads");
  const int64_t head_dim = qkv.size(-1) / (3 * heads);
  Tensor attended;
  if (packed) {
    const auto parts = qkv.view({rows, 3, heads, head_dim}).unbind(1);  // q, k, v [T, H, D] strided views
    attended = block_ops::varlen_attention(parts[0], parts[1], parts[2], *cu_seqlens, max_seqlen, p.scale)
                   .reshape({rows, heads * head_dim});
  } else {
    const int64_t batch = x.size(0), seq = x.size(1);
    const auto parts = qkv.view({batch, seq, 3, heads, head_dim}).transpose(1, 3).unbind(2);  // [B, H, S, D] views
    attended = block_ops::attention(parts[0], parts[1], parts[2], key_padding_mask, p.scale)
                   .transpose(1, 2)
                   .reshape({batch, seq, heads * head_dim});
  }
  const auto rows_of = [&](const Tensor& t) { return t.view({rows, hidden}); };
  const Tensor h = std::get<0>(block_ops::norm(rows_of(product(attended, 1)), rows_of(x), p.norm1_weight,
                                               p.norm1_bias, p.eps, false))
                       .view(x.sizes());
  const Tensor down = product(product(h, 2, &p.up_activation), 3);
  return std::get<0>(block_ops::norm(rows_of(down), rows_of(h), p.norm2_weight, p.norm2_bias, p.eps, false))
      .view(x.sizes());
}

// What a dense or packed batch needs before its first block: x's layout and a contiguous mask.
OptTensor checked_mask(const Tensor& x, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens,
                       const char* op) {
  const bool packed = cu_seqlens.has_value();
  TORCH_CHECK(x.dim() == (packed ? 2 : 3) && x.is_contiguous(), op,
              ": x must be contiguous [T, hidden] with cu_seqlens, else [B, S, hidden], got ", x.sizes());
  TORCH_CHECK(!(packed && key_padding_mask.has_value()), op,
              ": a packed batch has no padding to mask: give cu_seqlens or key_padding_mask, not both");
  return key_padding_mask ? OptTensor(key_padding_mask->contiguous()) : std::nullopt;
}

Tensor encoder_block(const Tensor& x, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens,
                     int64_t max_seqlen, int64_t heads, at::TensorList weights, const c10::List<OptTensor>& biases,
                     const c10::List<OptTensor>& weight_scales, double int8_max_crest, const OptTensor& norm1_weight,
                     const OptTensor& norm1_bias, const OptTensor& norm2_weight, const OptTensor& norm2_bias,
                     c10::string_view activation, double eps, double scale) {
  const OptTensor mask = checked_mask(x, key_padding_mask, cu_seqlens, "encoder_block");
  TORCH_CHECK(weights.size() == 4 && biases.size() == 4 && weight_scales.size() == 4,
              "encoder_block: weights, biases and weight_scales hold the qkv, out, up and down linears' (4 each)");
  c10::InferenceMode inference;  // kernels only: their autograd wrappers would not run anyway
  const BlockParams p = block_params(weights, biases, weight_scales, 0, norm1_weight, norm1_bias, norm2_weight,
                                     norm2_bias, heads, block_ops::activation_named(activation, "encoder_block"), eps,
                                     scale);
  return run_block(x, mask, cu_seqlens, max_seqlen, p, int8_max_crest);
}

// Every block of an encoder stack in one call, each block's parameters at its index in the lists (4 per block for
// the linears, 2 for the norms, 1 for the rest), returning each block's output. One call instead of one per block
// saves the Python between blocks: in the all-MiniLM-L6-v2 forward of one 18-token sentence (2-core AVX-512 VM,
// 2 threads) 0.29-0.31 ms for 6 blocks, Python that runs on caches each block's 7 MB of weights have just swept.
std::vector<Tensor> encoder_blocks(const Tensor& x, const OptTensor& key_padding_mask, const OptTensor& cu_seqlens,
                                   int64_t max_seqlen, at::IntArrayRef heads, at::TensorList weights,
                                   const c10::List<OptTensor>& biases, const c10::List<OptTensor>& weight_scales,
                                   double int8_max_crest, const c10::List<OptTensor>& norm_weights,
                                   const c10::List<OptTensor>& norm_biases,
                                   const std::vector<std::string>& activations, at::ArrayRef<double> eps,
                                   at::ArrayRef<double> scales) {
  const OptTensor mask = checked_mask(x, key_padding_mask, cu_seqlens, "encoder_blocks");
  const size_t blocks = heads.size();
  TORCH_CHECK(weights.size() == 4 * blocks && biases.size() == 4 * blocks && weight_scales.size() == 4 * blocks &&
                  norm_weights.size() == 2 * blocks && norm_biases.size() == 2 * blocks &&
                  activations.size() == blocks && eps.size() == blocks && scales.size() == blocks,
              "encoder_blocks: per block, 4 weights, biases and weight_scales (qkv, out, up, down), 2 norm weights "
              "and biases, one head count, activation, eps and scale; got ", blocks, " head counts, ", weights.size(),
              " weights, ", norm_weights.size(), " norm weights");
  c10::InferenceMode inference;
  std::vector<Tensor> outputs;
  outputs.reserve(blocks);
  Tensor hidden = x;
  for (size_t b = 0; b < blocks; ++b) {
    const size_t n = 2 * b;
    const BlockParams p = block_params(weights, biases, weight_scales, 4 * b, norm_weights.get(n), norm_biases.get(n),
                                       norm_weights.get(n + 1), norm_biases.get(n + 1), heads[b],
                                       block_ops::activation_named(activations[b], "encoder_blocks"), eps[b],
                                       scales[b]);
    hidden = run_block(hidden, mask, cu_seqlens, max_seqlen, p, int8_max_crest);
    outputs.push_back(hidden);
  }
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("encoder_block", &encoder_block);
  m.impl("encoder_blocks", &encoder_blocks);
}
// oneDNN-packed weights are MkldnnCPU tensors, and the dispatcher picks that key whenever one is an argument.
TORCH_LIBRARY_IMPL(fastformer, MkldnnCPU, m) {
  m.impl("encoder_block", &encoder_block);
  m.impl("encoder_blocks", &encoder_blocks);
}

}  // namespace fastformer::cpu
