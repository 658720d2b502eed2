// Launchers of the LayerNorm / RMSNorm CUDA kernels (torch-free; csrc/cuda/norm_binding.cpp binds them).
// Semantics are those of the layer_norm_* / rms_norm_* schemas in csrc/fastformer.cpp and of the CPU
// kernels in csrc/cpu/norm.cpp. Elements have type `dtype`; statistics and accumulation are fp32.
#pragma once

#include <cstdint>

#include "cuda/common.h"

namespace fastformer::cuda {

struct NormFwdArgs {
  const void* x;                 // [rows, cols], unit column stride, row stride x_row_stride (elements)
  int64_t x_row_stride;
  const void* residual;          // like x (row stride residual_row_stride), or nullptr
  int64_t residual_row_stride;
  const void* weight;            // [cols] or nullptr
  const void* bias;              // [cols] or nullptr (LayerNorm only)
  void* out;                     // [rows, cols] contiguous
  void* residual_out;            // [rows, cols] contiguous, receives x + residual; nullptr without residual
  float* mean;                   // [rows]; nullptr for RMSNorm
  float* rstd;                   // [rows]
  int64_t rows, cols;
  float eps;
};

// out = (s - mean) * rstd * weight + bias with s = x + residual (RMSNorm: mean = 0, no bias).
cudaError_t norm_fwd(const NormFwdArgs& args, bool rms, DType dtype, cudaStream_t stream);

struct NormBwdArgs {
  const void* grad_out;           // [rows, cols] contiguous
  const void* grad_residual_out;  // [rows, cols] contiguous, or nullptr
  const void* input;              // the normalized input s, [rows, cols] contiguous
  const void* weight;             // [cols] or nullptr
  const float* mean;              // [rows]; nullptr for RMSNorm
  const float* rstd;              // [rows]
  void* grad_x;                   // [rows, cols] contiguous
  void* grad_weight;              // [cols], or nullptr when there is no weight
  void* grad_bias;                // [cols], or nullptr when not wanted
  int64_t rows, cols;
  int sm_count;                   // multiprocessors of the device (sizes the grid)
  // fp32 scratch: norm_bwd_partial_rows(args) rows of cols for grad_weight, then as many for
  // grad_bias (only those that are wanted). Each row is owned by one group of threads, and the rows
  // are summed in a fixed order, so grad_weight and grad_bias are deterministic.
  float* partials;
};

int64_t norm_bwd_partial_rows(const NormBwdArgs& args);

// grad_x = rstd * (g - xhat * mean(g * xhat) - mean(g)) + grad_residual_out, g = grad_out * weight
// (RMSNorm: no mean(g)); grad_weight = sum over rows of grad_out * xhat; grad_bias = sum of grad_out.
cudaError_t norm_bwd(const NormBwdArgs& args, bool rms, DType dtype, cudaStream_t stream);

}  // namespace fastformer::cuda
