// Registers the LayerNorm / RMSNorm CUDA kernels (csrc/cuda/norm.cu) for the CUDA dispatch key.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cuda/binding.h"
#include "cuda/norm.h"
#include "norm_binding.h"

namespace fastformer::cuda {
namespace {

using at::Tensor;

const void* data_or_null(const std::optional<Tensor>& t) { return t ? t->const_data_ptr() : nullptr; }

const char* op_name(bool rms, bool backward) {
  if (rms) return backward ? "rms_norm_bwd" : "rms_norm_fwd";
  return backward ? "layer_norm_bwd" : "layer_norm_fwd";
}

template <bool kRms>
NormFwdResult norm_fwd_cuda(const Tensor& x, const std::optional<Tensor>& residual, const std::optional<Tensor>& weight,
                            const std::optional<Tensor>& bias, double eps) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor, got ", x.device());
  const DType dtype = dtype_of(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out, residual_out, mean, rstd;
  std::tie(out, residual_out, mean, rstd) = norm_fwd_outputs(x, residual, weight, bias, eps, kRms);
  if (x.numel() == 0) return {out, residual_out, mean, rstd};
  const NormFwdArgs args{
      x.const_data_ptr(),
      x.stride(0),
      data_or_null(residual),
      residual ? residual->stride(0) : 0,
      data_or_null(weight),
      data_or_null(bias),
      out.data_ptr(),
      residual ? residual_out.data_ptr() : nullptr,
      kRms ? nullptr : mean.data_ptr<float>(),
      rstd.data_ptr<float>(),
      x.size(0),
      x.size(1),
      static_cast<float>(eps),
  };
  check_launch(norm_fwd(args, kRms, dtype, current_stream(x)), op_name(kRms, false));
  return {out, residual_out, mean, rstd};
}

template <bool kRms>
NormBwdResult norm_bwd_cuda(const Tensor& grad_out, const std::optional<Tensor>& grad_residual_out,
                            const Tensor& input, const std::optional<Tensor>& weight, const Tensor& mean,
                            const Tensor& rstd, bool has_bias) {
  TORCH_CHECK(input.is_cuda(), "normed_input must be a CUDA tensor, got ", input.device());
  const DType dtype = dtype_of(input, "normed_input");
  const c10::cuda::CUDAGuard guard(input.device());
  Tensor grad_x, grad_weight, grad_bias;
  std::tie(grad_x, grad_weight, grad_bias) =
      norm_bwd_outputs(grad_out, grad_residual_out, input, weight, mean, rstd, has_bias, kRms);
  if (input.numel() == 0) return {grad_x, grad_weight, grad_bias};
  int sm_count = 0;
  const cudaError_t err = cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, input.get_device());
  TORCH_CHECK(err == cudaSuccess, "fastformer ", op_name(kRms, true), ": cannot query the multiprocessor count: ",
              cudaGetErrorString(err));
  NormBwdArgs args{
      grad_out.const_data_ptr(),
      data_or_null(grad_residual_out),
      input.const_data_ptr(),
      data_or_null(weight),
      kRms ? nullptr : mean.const_data_ptr<float>(),
      rstd.const_data_ptr<float>(),
      grad_x.data_ptr(),
      weight ? grad_weight.data_ptr() : nullptr,
      has_bias ? grad_bias.data_ptr() : nullptr,
      input.size(0),
      input.size(1),
      sm_count,
      nullptr,
  };
  const int64_t param_grads = (weight ? 1 : 0) + (has_bias ? 1 : 0);
  const Tensor partials =  // [param_grads, partial_rows, N] fp32
      at::empty({param_grads, norm_bwd_partial_rows(args), input.size(1)}, input.options().dtype(at::kFloat));
  args.partials = param_grads > 0 ? partials.data_ptr<float>() : nullptr;
  check_launch(norm_bwd(args, kRms, dtype, current_stream(input)), op_name(kRms, true));
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CUDA, m) {
  m.impl("layer_norm_fwd", &norm_fwd_cuda<false>);
  m.impl("layer_norm_bwd", &norm_bwd_cuda<false>);
  m.impl("rms_norm_fwd", &rms_norm_fwd_adapter<&norm_fwd_cuda<true>>);
  m.impl("rms_norm_bwd", &rms_norm_bwd_adapter<&norm_bwd_cuda<true>>);
}

}  // namespace fastformer::cuda
