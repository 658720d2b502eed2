// Torch-free launcher of the CUDA attention forward (torch.ops.fastformer.attention_fwd on CUDA).
//
// Semantics are those of the schema comment in csrc/fastformer.cpp. Two kernel families:
//   - tensor-core kernel (fp16/bf16, Sq > kSplitKvMaxQueryRows): FlashAttention-2 style, one CTA per
//     (query tile, b*h), K/V tiles streamed through shared memory, mma.sync m16n8k16 with fp32
//     accumulation, online softmax in registers;
//   - split-KV kernel (decode shapes Sq <= kSplitKvMaxQueryRows, and every fp32 input): SIMT, one CTA
//     per (key chunk, block of query rows, b*h) writing partial (out, max, sum) to a workspace, then a
//     combine kernel writes out and lse.
// The binding asks plan_attention_fwd which one runs and how much fp32 workspace it needs.
#pragma once

#include <cstdint>

#include "cuda/common.h"

namespace fastformer::cuda {

// Queries per CTA of the split-KV kernel; inputs with at most this many query rows take it.
constexpr int64_t kSplitKvMaxQueryRows = 4;

// Strides are in elements. Optional inputs are absent when their pointer is null.
struct AttentionFwdParams {
  DType dtype;  // of q, k, v and out
  int64_t batch, heads, kv_heads, seqlen_q, seqlen_k, head_dim;
  const void* q;  // [B, H, Sq, D], strides of dims 0..2 below, last dim contiguous
  const void* k;  // [B, Hkv, Sk, D]
  const void* v;  // [B, Hkv, Sk, D]
  int64_t q_stride[3], k_stride[3], v_stride[3];
  // q, k, v pointers 16-byte aligned and their strides multiples of 16 bytes: tiles load with 16-byte
  // cp.async; otherwise element by element.
  bool qkv_16b_aligned;
  void* out;   // [B, H, Sq, D] contiguous, dtype
  float* lse;  // [B, H, Sq] contiguous

  const void* bias;  // additive, expanded to [B, H, Sq, Sk] (stride 0 where broadcast)
  DType bias_dtype;
  int64_t bias_stride[4];
  const bool* key_padding_mask;  // [B, Sk], true = attend
  int64_t key_padding_mask_stride[2];
  const void* rel_table;  // T5 relative bias [num_buckets, H]
  DType rel_table_dtype;
  int64_t rel_table_stride[2];
  int64_t num_buckets;
  const int32_t* rel_lut;  // [rel_lut_len], given iff rel_table is
  int64_t rel_lut_stride, rel_lut_len;
  bool rel_bidirectional;

  bool causal;  // bottom-right aligned: query i keeps key j iff j <= i + Sk - Sq
  float scale;
  float dropout_p;  // in [0, 1]
  uint64_t seed;    // Philox key (the int64 seed's bits)
};

struct AttentionFwdPlan {
  bool split_kv;             // split-KV kernel + combine; else the tensor-core kernel
  int64_t num_splits;        // key chunks per (query block, b*h) for split_kv
  int64_t chunk_keys;        // keys per chunk
  int64_t grid_ctas;         // CTAs of the main kernel (the binding checks it fits a 1-D grid)
  int64_t workspace_floats;  // fp32 workspace the launcher needs (0 without split_kv)
};

bool attention_head_dim_supported(int64_t head_dim);  // 32, 64, 80, 96, 128, 256

// sm_count: multiprocessors of the device; split_kv aims for about two CTAs per multiprocessor.
// Needs seqlen_k >= 1 and batch * heads * seqlen_q >= 1 (the binding handles empty inputs itself).
AttentionFwdPlan plan_attention_fwd(const AttentionFwdParams& params, int sm_count);

// workspace: plan.workspace_floats fp32 values on the device of the tensors (may be null when 0).
cudaError_t attention_fwd(const AttentionFwdParams& params, const AttentionFwdPlan& plan, float* workspace,
                          cudaStream_t stream);

}  // namespace fastformer::cuda
