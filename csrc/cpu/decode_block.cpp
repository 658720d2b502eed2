// One pre-norm transformer block for one new token (batch 1) against its KV cache, on CPU, for inference:
// the whole block of a GPT-2-style decode step in one call.
//
// No new math: the block runs the same registered kernels the Python block calls one by one (layer_norm_fwd /
// rms_norm_fwd, gemv, attention_fwd) and ATen's activations, in the same order on the same data, so its output is
// the Python block's bit for bit. What it removes is the Python between them: measured on the 2-core AVX-512
// development VM (GPT-2-small, 64 cached tokens, 1 thread, the weight stream stubbed out), a decode step's work
// besides the 49 weight products took 2.7 ms, spread over ~150 small calls through modules, argument checks and
// backend choice (~10-20 us each) around kernels of 1-10 us. Here each kernel is reached through the dispatcher
// (~1-2 us) with no checks beyond the kernels' own.
//
// Per block, x [1, hidden] (the residual stream), H heads of D = hidden_qkv / (3 H):
//   h = norm1(x)                                  layer_norm_fwd / rms_norm_fwd
//   q, k, v = split(gemv(h, W_qkv, b_qkv))        k, v written to keys / values [1, H, max, D] at slot `length`
//   a = attention(q, keys[:length+1], values[:length+1], key_padding_mask) * scale folded in
//   n, x = norm2(gemv(a, W_out, b_out), residual=x)   (fused add & norm: n = norm2(x + o), x = x + o)
//   return x + gemv(act(gemv(n, W_up, b_up)), W_down, b_down)
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include "cpu/block_ops.h"

namespace fastformer::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;
using block_ops::attention;
using block_ops::gemv;
using block_ops::norm;

Tensor decode_block(const Tensor& x, Tensor& keys, Tensor& values, int64_t length, const Tensor& key_padding_mask,
                    const OptTensor& norm1_weight, const OptTensor& norm1_bias, const Tensor& qkv_weight,
                    const OptTensor& qkv_bias, const Tensor& out_weight, const OptTensor& out_bias,
                    const OptTensor& norm2_weight, const OptTensor& norm2_bias, const Tensor& up_weight,
                    const OptTensor& up_bias, const Tensor& down_weight, const OptTensor& down_bias, bool rms,
                    double eps, c10::string_view activation, double scale) {
  TORCH_CHECK(x.dim() == 2 && x.size(0) == 1 && x.is_contiguous() &&
                  (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16),
              "decode_block: x must be one contiguous fp32 or bf16 row [1, hidden], got ", x.sizes());
  TORCH_CHECK(keys.dim() == 4 && keys.size(0) == 1 && keys.sizes() == values.sizes() && keys.stride(3) == 1 &&
                  values.stride(3) == 1,
              "decode_block: keys and values must be one row's cache [1, H, max_length, D] with contiguous heads");
  const int64_t heads = keys.size(1), head_dim = keys.size(3), width = heads * head_dim;
  TORCH_CHECK(qkv_weight.dim() == 2 && qkv_weight.size(0) == 3 * width,
              "decode_block: qkv_weight must be [3 * H * D = ", 3 * width, ", hidden], got ", qkv_weight.sizes());
  TORCH_CHECK(0 <= length && length < keys.size(2), "decode_block: length (", length,
              ") must leave a free slot in the cache of ", keys.size(2));
  TORCH_CHECK(key_padding_mask.dim() == 2 && key_padding_mask.size(0) == 1 && key_padding_mask.size(1) == length + 1,
              "decode_block: key_padding_mask must be [1, length + 1 = ", length + 1, "], got ",
              key_padding_mask.sizes());
  c10::InferenceMode inference;  // kernels only: their autograd wrappers would not run anyway

  const Tensor h = std::get<0>(norm(x, std::nullopt, norm1_weight, norm1_bias, eps, rms));
  const Tensor qkv = gemv(h.view({-1}), qkv_weight, qkv_bias).view({3, heads, head_dim});  // [3, H, D]
  keys.select(2, length).copy_(qkv[1].unsqueeze(0));  // [1, H, D] into slot `length`
  values.select(2, length).copy_(qkv[2].unsqueeze(0));
  const auto cached = [&](const Tensor& t) { return t.narrow(2, 0, length + 1); };  // [1, H, length + 1, D]
  // One query against every cached key: causal (bottom-right aligned) would keep them all, so it is off.
  const Tensor attended = attention(qkv[0].view({1, heads, 1, head_dim}), cached(keys), cached(values),
                                    key_padding_mask.contiguous(), scale);  // [1, H, 1, D]
  const Tensor o = gemv(attended.view({-1}), out_weight, out_bias).view({1, -1});  // [1, hidden]
  auto [normed, stream] = norm(o, x, norm2_weight, norm2_bias, eps, rms);
  Tensor up = gemv(normed.view({-1}), up_weight, up_bias);
  block_ops::activation_named(activation, "decode_block").apply(up);
  return stream.add_(gemv(up, down_weight, down_bias).view({1, -1}));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) { m.impl("decode_block", &decode_block); }

}  // namespace fastformer::cpu
