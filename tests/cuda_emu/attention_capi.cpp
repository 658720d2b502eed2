// C entry point for tests/ops/test_attention_cuda_emu.py (ctypes): fills AttentionFwdParams from flat
// arrays, plans, and runs the real launcher on host memory under the emulator. The split-KV
// workspace starts as NaN so a partial result the combine reads but nobody wrote shows up.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cuda/attention.h"
#include "cuda/device_api.cuh"

using fastformer::cuda::AttentionFwdParams;
using fastformer::cuda::AttentionFwdPlan;
using fastformer::cuda::DType;

// ptrs: q, k, v, out, lse, bias, key_padding_mask, rel_table, rel_lut (null when absent).
// ints: dtype, B, H, Hkv, Sq, Sk, D, q_stride[3], k_stride[3], v_stride[3], qkv_16b_aligned,
//       bias_dtype, bias_stride[4], key_padding_mask_stride[2], rel_table_dtype, rel_table_stride[2],
//       num_buckets, rel_lut_stride, rel_lut_len, rel_bidirectional, causal, seed   (33 values).
// floats: scale, dropout_p. schedule_policy: emu::SchedulePolicy. plan_out: split_kv, num_splits,
// chunk_keys. Returns the cudaError_t.
extern "C" int emu_attention_fwd(const void* const* ptrs, const int64_t* ints, const double* floats, int sm_count,
                                 int late_copies, int schedule_policy, int64_t* plan_out) {
  AttentionFwdParams p{};
  int i = 0;
  const auto next = [&] { return ints[i++]; };
  const auto strides = [&](int64_t* dst, int n) {
    for (int d = 0; d < n; ++d) dst[d] = next();
  };
  p.dtype = static_cast<DType>(next());
  p.batch = next();
  p.heads = next();
  p.kv_heads = next();
  p.seqlen_q = next();
  p.seqlen_k = next();
  p.head_dim = next();
  strides(p.q_stride, 3);
  strides(p.k_stride, 3);
  strides(p.v_stride, 3);
  p.qkv_16b_aligned = next() != 0;
  p.bias_dtype = static_cast<DType>(next());
  strides(p.bias_stride, 4);
  strides(p.key_padding_mask_stride, 2);
  p.rel_table_dtype = static_cast<DType>(next());
  strides(p.rel_table_stride, 2);
  p.num_buckets = next();
  p.rel_lut_stride = next();
  p.rel_lut_len = next();
  p.rel_bidirectional = next() != 0;
  p.causal = next() != 0;
  p.seed = static_cast<uint64_t>(next());
  p.q = ptrs[0];
  p.k = ptrs[1];
  p.v = ptrs[2];
  p.out = const_cast<void*>(ptrs[3]);
  p.lse = static_cast<float*>(const_cast<void*>(ptrs[4]));
  p.bias = ptrs[5];
  p.key_padding_mask = static_cast<const bool*>(ptrs[6]);
  p.rel_table = ptrs[7];
  p.rel_lut = static_cast<const int32_t*>(ptrs[8]);
  p.scale = static_cast<float>(floats[0]);
  p.dropout_p = static_cast<float>(floats[1]);

  emu::configure(late_copies != 0, static_cast<emu::SchedulePolicy>(schedule_policy));
  const AttentionFwdPlan plan = fastformer::cuda::plan_attention_fwd(p, sm_count);
  plan_out[0] = plan.split_kv;
  plan_out[1] = plan.num_splits;
  plan_out[2] = plan.chunk_keys;
  std::vector<float> workspace(static_cast<size_t>(plan.workspace_floats), std::nanf(""));
  return static_cast<int>(fastformer::cuda::attention_fwd(p, plan, workspace.data(), nullptr));
}
