// What the CPU and CUDA bindings of the norm ops share: argument checks, output allocation, and the
// RMSNorm schemas as adapters over an implementation with the LayerNorm signature (RMSNorm is
// LayerNorm without bias and mean; see csrc/fastformer.cpp for the schemas).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

namespace fastformer {

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), name, " must be on ", like.device(), ", got ", t.device());
}

inline void check_rows(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 2 && t.sizes() == like.sizes(), name, " must have shape ", like.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have dtype ", like.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK(t.stride(1) == 1, name, " must have a contiguous last dimension");
  check_same_device(t, name, like);
}

inline void check_param(const std::optional<at::Tensor>& p, const char* name, const at::Tensor& x) {
  if (!p) return;
  TORCH_CHECK(p->dim() == 1 && p->size(0) == x.size(1), name, " must have shape [", x.size(1), "], got ", p->sizes());
  TORCH_CHECK(p->scalar_type() == x.scalar_type(), name, " must have dtype ", x.scalar_type(), ", got ", p->scalar_type());
  TORCH_CHECK(p->is_contiguous(), name, " must be contiguous");
  check_same_device(*p, name, x);
}

// mean / rstd: one value per row in the accumulation dtype (fp32; fp64 for fp64 inputs).
inline void check_stats(const at::Tensor& t, const char* name, const at::Tensor& input) {
  const auto acc_dtype = at::toOpMathType(input.scalar_type());
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(0), name, " must have shape [", input.size(0), "], got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == acc_dtype, name, " must have dtype ", acc_dtype, ", got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  check_same_device(t, name, input);
}

using NormFwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;  // out, residual_out, mean, rstd
using NormBwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;              // grad_x, grad_weight, grad_bias

// Checks the forward's arguments and allocates its outputs: residual_out is empty without residual,
// mean is empty for RMSNorm.
inline NormFwdResult norm_fwd_outputs(const at::Tensor& x, const std::optional<at::Tensor>& residual,
                                      const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
                                      double eps, bool rms) {
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1, "x must be 2-D [rows, N] with a contiguous last dimension");
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  if (residual) check_rows(*residual, "residual", x);
  check_param(weight, "weight", x);
  check_param(bias, "bias", x);
  const auto stats = x.options().dtype(at::toOpMathType(x.scalar_type()));
  return {at::empty(x.sizes(), x.options()), residual ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options()),
          at::empty({rms ? 0 : x.size(0)}, stats), at::empty({x.size(0)}, stats)};
}

// Checks the backward's arguments and allocates its outputs: grad_weight is empty without weight,
// grad_bias empty unless has_bias; both are zeros when there are no rows (nothing to sum).
inline NormBwdResult norm_bwd_outputs(const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_residual_out,
                                      const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                      const at::Tensor& mean, const at::Tensor& rstd, bool has_bias, bool rms) {
  TORCH_CHECK(input.dim() == 2 && input.is_contiguous(), "normed_input must be a contiguous [rows, N] tensor");
  check_rows(grad_out, "grad_out", input);
  TORCH_CHECK(grad_out.is_contiguous(), "grad_out must be contiguous");
  if (grad_residual_out) {
    check_rows(*grad_residual_out, "grad_residual_out", input);
    TORCH_CHECK(grad_residual_out->is_contiguous(), "grad_residual_out must be contiguous");
  }
  check_param(weight, "weight", input);
  check_stats(rstd, "rstd", input);
  if (!rms) check_stats(mean, "mean", input);
  const auto param_grad = [&](bool wanted) {
    if (!wanted) return at::empty({0}, input.options());
    return input.size(0) > 0 ? at::empty({input.size(1)}, input.options()) : at::zeros({input.size(1)}, input.options());
  };
  return {at::empty(input.sizes(), input.options()), param_grad(weight.has_value()), param_grad(has_bias)};
}

// The rms_norm_fwd / rms_norm_bwd schemas over implementations with the layer_norm signatures.
template <NormFwdResult (*kFwd)(const at::Tensor&, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                const std::optional<at::Tensor>&, double)>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rms_norm_fwd_adapter(const at::Tensor& x,
                                                                    const std::optional<at::Tensor>& residual,
                                                                    const std::optional<at::Tensor>& weight, double eps) {
  auto [out, residual_out, mean, rstd] = kFwd(x, residual, weight, std::nullopt, eps);
  return {out, residual_out, rstd};
}

template <NormBwdResult (*kBwd)(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, bool)>
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_adapter(const at::Tensor& grad_out,
                                                        const std::optional<at::Tensor>& grad_residual_out,
                                                        const at::Tensor& input, const std::optional<at::Tensor>& weight,
                                                        const at::Tensor& rstd) {
  auto [grad_x, grad_weight, grad_bias] =
      kBwd(grad_out, grad_residual_out, input, weight, at::empty({0}, rstd.options()), rstd, false);
  return {grad_x, grad_weight};
}

}  // namespace fastformer
