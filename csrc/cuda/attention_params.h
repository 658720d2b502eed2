// The torch side of attention_fwd, shared by the CUDA binding (attention_binding.cpp) and the CPU emulator op
// (tests/cuda_emu/attention_emu_op.cpp): input checks against the schema, the launcher parameters,
// output allocation, and the plan -> workspace -> launch sequence. Uses ATen only (no CUDA runtime
// from torch), so the emulator builds it against the CPU torch.
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>

#include "cuda/attention.h"

namespace fastformer::cuda {

struct AttentionFwdCall {
  AttentionFwdParams params;  // out and lse pointers are set by run_attention_fwd
  at::Tensor out;             // [B, H, Sq, D], q's dtype and device
  at::Tensor lse;             // [B, H, Sq] float32
};

// Checks every input against the schema (shapes, dtypes, strides, all on q's device) with an error
// naming the argument, and allocates out and lse.
AttentionFwdCall prepare_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const std::optional<at::Tensor>& attn_bias,
                                       const std::optional<at::Tensor>& key_padding_mask,
                                       const std::optional<at::Tensor>& rel_table,
                                       const std::optional<at::Tensor>& rel_lut, bool rel_bidirectional, bool causal,
                                       double scale, double dropout_p, int64_t seed);

using AttentionFwdLauncher =
    std::function<cudaError_t(const AttentionFwdParams& params, const AttentionFwdPlan& plan, float* workspace)>;

// Fills out and lse: directly when there is nothing to launch (no queries; no keys: out = 0,
// lse = +inf), else plans for sm_count multiprocessors, allocates the fp32 workspace on q's device
// and calls launch. Returns the plan (default-constructed when nothing was launched).
AttentionFwdPlan run_attention_fwd(AttentionFwdCall& call, int sm_count, const AttentionFwdLauncher& launch);

}  // namespace fastformer::cuda
