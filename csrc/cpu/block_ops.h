// The registered ops a fused block calls (csrc/cpu/decode_block.cpp, csrc/cpu/encoder_block.cpp), reached from C++
// through the dispatcher (~1-2 us a call; through Python ops and modules each took ~10-20 us). Each handle is looked
// up once. Callers hold c10::InferenceMode, so the calls go straight to the CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace fastformer::cpu::block_ops {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// y [N] = weight [N, K] x [K] + bias: fastformer's single-row kernel (csrc/cpu/gemv.cpp).
inline Tensor gemv(const Tensor& x, const Tensor& weight, const OptTensor& bias) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastformer::gemv", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&)>();
  return op.call(x, weight, bias);
}

// post_op(x W^T + b) on a weight packed by torch.ops.mkldnn._reorder_linear_weight: the product ff.nn.Linear runs,
// with its fused activation (post_op "none", "gelu", "relu", "swish"; algorithm "", "none" or "tanh").
inline Tensor packed_linear(const Tensor& x, const Tensor& packed_weight, const OptTensor& bias,
                            c10::string_view post_op, c10::string_view algorithm) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view,
                                     c10::List<std::optional<c10::Scalar>>, std::optional<c10::string_view>)>();
  return op.call(x, packed_weight, bias, post_op, c10::List<std::optional<c10::Scalar>>(), algorithm);
}

// act(x W^T + b) on a weight packed by fastformer::pack_panels: fastformer's product for a few fp32 rows
// (csrc/cpu/panel_linear.cpp), which ff.nn.Linear runs for them; activation "none" or an Activation's name.
inline Tensor panel_linear(const Tensor& x, const Tensor& panels, const OptTensor& bias, c10::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastformer::panel_linear", "")
                       .typed<Tensor(const Tensor&, const Tensor&, const OptTensor&, c10::string_view)>();
  return op.call(x, panels, bias, activation);
}

// (x W^T + b) with int8 weights [N, K] and per-channel scales [N], as ff.nn.Int8Linear: x's rows quantized per row
// (rows whose max/rms exceeds max_crest get a second, residual row), an int32 product, dequantized to fp32.
inline Tensor int8_linear(const Tensor& x, const Tensor& weight_int8, const Tensor& weight_scale, const OptTensor& bias,
                          double max_crest) {
  static auto quantize = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastformer::quantize_rows_int8", "")
                             .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, double)>();
  static auto dequantize = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fastformer::dequantize_rows_int32", "")
                               .typed<Tensor(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                             const OptTensor&)>();
  const int64_t in = weight_int8.size(1);
  auto [quantized, row_scale, refined] = quantize.call(x.reshape({-1, in}), max_crest);  // [M + R, K], [M + R], [R]
  const Tensor acc = at::_int_mm(quantized, weight_int8.t());  // [M + R, N] int32
  auto sizes = x.sizes().vec();
  sizes.back() = weight_int8.size(0);
  return dequantize.call(acc, row_scale, weight_scale, bias, refined).view(sizes);
}

// (norm(x + residual), x + residual) with a residual, else (norm(x), undefined); x [rows, N].
inline std::tuple<Tensor, Tensor> norm(const Tensor& x, const OptTensor& residual, const OptTensor& weight,
                                       const OptTensor& bias, double eps, bool rms) {
  if (rms) {
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("fastformer::rms_norm_fwd", "")
                         .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&, const OptTensor&,
                                                                   double)>();
    auto [out, residual_out, rstd] = op.call(x, residual, weight, eps);
    return {out, residual_out};
  }
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastformer::layer_norm_fwd", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor, Tensor>(const Tensor&, const OptTensor&,
                                                                         const OptTensor&, const OptTensor&, double)>();
  auto [out, residual_out, mean, rstd] = op.call(x, residual, weight, bias, eps);
  return {out, residual_out};
}

// Non-causal attention without bias or dropout: q, k, v [B, H, S, D] -> out [B, H, Sq, D].
inline Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, const OptTensor& key_padding_mask,
                        double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastformer::attention_fwd", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const OptTensor&,
                                                         const OptTensor&, const OptTensor&, const OptTensor&, bool,
                                                         bool, double, double, int64_t)>();
  return std::get<0>(op.call(q, k, v, std::nullopt, key_padding_mask, std::nullopt, std::nullopt, false, false, scale,
                             0.0, 0));
}

// The same over packed sequences (q, k, v [T, H, D], sequence b rows cu_seqlens[b]:cu_seqlens[b + 1]) -> [T, H, D].
inline Tensor varlen_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& cu_seqlens,
                               int64_t max_seqlen, double scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fastformer::varlen_attention_fwd", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         const Tensor&, c10::SymInt, c10::SymInt, const OptTensor&,
                                                         const OptTensor&, bool, bool, double, double, int64_t)>();
  return std::get<0>(op.call(q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, std::nullopt, std::nullopt,
                             false, false, scale, 0.0, 0));
}

// The activation after the up product, by name (fastformer/ops/_block_args.py ACTIVATIONS): by that name for
// panel_linear, as a oneDNN post-op fused into a packed product as ff.nn.Linear does, or as ATen computes it, in
// place on a product the block owns (a fresh [rows, intermediate] output cost more than the activation itself:
// BERT-base, 8 x 128 tokens, int8, GELU took 3.4 ms a call in the model vs 1.0 ms on a warm buffer).
struct Activation {
  c10::string_view name, post_op, algorithm;
  Tensor& (*apply)(Tensor&);
};

inline Activation activation_named(c10::string_view name, const char* op) {
  if (name == "gelu") return {"gelu", "gelu", "none", [](Tensor& t) -> Tensor& { return at::gelu_(t); }};
  if (name == "gelu_tanh")
    return {"gelu_tanh", "gelu", "tanh", [](Tensor& t) -> Tensor& { return at::gelu_(t, "tanh"); }};
  if (name == "relu") return {"relu", "relu", "", [](Tensor& t) -> Tensor& { return at::relu_(t); }};
  if (name == "silu") return {"silu", "swish", "", [](Tensor& t) -> Tensor& { return at::silu_(t); }};
  TORCH_CHECK(false, op, ": activation must be gelu, gelu_tanh, relu or silu, got ", std::string(name));
}

}  // namespace fastformer::cpu::block_ops
