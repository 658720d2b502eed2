// Launchers of the softmax CUDA kernels (torch-free; csrc/cuda/softmax_binding.cpp binds them). Semantics
// are those of the softmax_fwd / softmax_bwd schemas in csrc/fastformer.cpp; accumulation is fp32.
#pragma once

#include <cstdint>

#include "cuda/common.h"

namespace fastformer::cuda {

// Element type of the mask: bool (true = keep), additive in the dtype of x, or additive fp32.
enum class MaskKind : int { kNone = 0, kBool = 1, kSameAsX = 2, kFloat32 = 3 };

struct SoftmaxFwdArgs {
  const void* x;              // [A, B, M, N], unit stride along N
  int64_t x_strides[3];       // strides of A, B, M (elements)
  const void* mask;           // expanded to [A, B, M, N] (stride 0 where broadcast), or nullptr
  MaskKind mask_kind;
  int64_t mask_strides[4];    // strides of A, B, M, N (elements)
  void* out;                  // [A, B, M, N] contiguous
  int64_t sizes[4];           // A, B, M, N
  float scale;
  bool causal;                // keep key n of query row m iff n <= m + N - M (bottom-right aligned)
};

// out = softmax over N of scale * x + mask (bool mask / causal: removed keys get probability 0).
// A row with no kept key (every score -inf) is all zeros, never NaN.
cudaError_t softmax_fwd(const SoftmaxFwdArgs& args, DType dtype, cudaStream_t stream);

// grad_x = scale * out * (grad_out - sum over the row of grad_out * out); all [rows, cols] contiguous.
cudaError_t softmax_bwd(const void* grad_out, const void* out, void* grad_x, int64_t rows, int64_t cols, float scale,
                        DType dtype, cudaStream_t stream);

}  // namespace fastformer::cuda
