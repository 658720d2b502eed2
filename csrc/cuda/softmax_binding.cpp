// Registers the softmax CUDA kernels (csrc/cuda/softmax.cu) for the CUDA dispatch key.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/binding.h"
#include "cuda/softmax.h"

namespace fastformer::cuda {
namespace {

using at::Tensor;

// Stride of dimension d for the kernel: 0 for a dimension of size 1, whose stride torch leaves
// arbitrary (a stray odd stride would otherwise rule out 16-byte accesses).
int64_t kernel_stride(const Tensor& t, int64_t d) { return t.size(d) == 1 ? 0 : t.stride(d); }

MaskKind mask_kind_of(const Tensor& mask, const Tensor& x) {
  if (mask.scalar_type() == at::kBool) return MaskKind::kBool;
  if (mask.scalar_type() == x.scalar_type()) return MaskKind::kSameAsX;
  if (mask.scalar_type() == at::kFloat) return MaskKind::kFloat32;
  TORCH_CHECK(false, "mask must be bool, ", x.scalar_type(), " (the dtype of x) or float32, got ", mask.scalar_type());
}

Tensor softmax_fwd_cuda(const Tensor& x, const std::optional<Tensor>& mask, double scale, bool causal) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [A, B, M, N], got shape ", x.sizes());
  TORCH_CHECK(x.size(3) <= 1 || x.stride(3) == 1, "x must have a contiguous last dimension, got strides ", x.strides());
  const DType dtype = dtype_of(x, "x");
  SoftmaxFwdArgs args{};
  if (mask) {
    TORCH_CHECK(mask->sizes() == x.sizes(), "mask must be expanded to the shape of x ", x.sizes(), ", got ",
                mask->sizes());
    TORCH_CHECK(mask->device() == x.device(), "mask must be on ", x.device(), ", got ", mask->device());
    args.mask = mask->const_data_ptr();
    args.mask_kind = mask_kind_of(*mask, x);
    for (int64_t d = 0; d < 4; ++d) args.mask_strides[d] = kernel_stride(*mask, d);
  }
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty(x.sizes(), x.options());  // [A, B, M, N] contiguous
  if (x.numel() == 0) return out;
  args.x = x.const_data_ptr();
  for (int64_t d = 0; d < 3; ++d) args.x_strides[d] = kernel_stride(x, d);
  args.out = out.data_ptr();
  for (int64_t d = 0; d < 4; ++d) args.sizes[d] = x.size(d);
  args.scale = static_cast<float>(scale);
  args.causal = causal;
  check_launch(softmax_fwd(args, dtype, current_stream(x)), "softmax_fwd");
  return out;
}

Tensor softmax_bwd_cuda(const Tensor& grad_out, const Tensor& out, double scale) {
  TORCH_CHECK(out.is_cuda(), "out must be a CUDA tensor, got ", out.device());
  TORCH_CHECK(out.dim() >= 1 && out.is_contiguous(), "out must be a contiguous tensor of at least one dimension");
  TORCH_CHECK(grad_out.sizes() == out.sizes(), "grad_out must have shape ", out.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), "grad_out must have dtype ", out.scalar_type(), ", got ",
              grad_out.scalar_type());
  TORCH_CHECK(grad_out.is_contiguous(), "grad_out must be contiguous");
  TORCH_CHECK(grad_out.device() == out.device(), "grad_out must be on ", out.device(), ", got ", grad_out.device());
  const DType dtype = dtype_of(out, "out");
  const c10::cuda::CUDAGuard guard(out.device());
  Tensor grad_x = at::empty(out.sizes(), out.options());
  if (out.numel() == 0) return grad_x;
  const int64_t cols = out.size(-1);
  check_launch(softmax_bwd(grad_out.const_data_ptr(), out.const_data_ptr(), grad_x.data_ptr(), out.numel() / cols, cols,
                           static_cast<float>(scale), dtype, current_stream(out)),
               "softmax_bwd");
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CUDA, m) {
  m.impl("softmax_fwd", &softmax_fwd_cuda);
  m.impl("softmax_bwd", &softmax_bwd_cuda);
}

}  // namespace fastformer::cuda
