// torch.ops.fastformer_emu.attention_fwd: attention_fwd's schema on CPU tensors, running the binding's
// shared torch side (csrc/cuda/attention_params.cpp) and the real launcher and kernels of
// csrc/cuda/attention.cu under the host emulator. Extra arguments pick the emulated machine: its
// multiprocessor count (the split-KV plan), when cp.async copies land, and the thread schedule.
// Returns the plan too: [split_kv, num_splits, chunk_keys].
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "cuda/attention.h"
#include "cuda/attention_params.h"
#include "cuda/device_api.cuh"

namespace fastformer::cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, std::vector<int64_t>> attention_fwd_emulated(
    const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& attn_bias,
    const std::optional<Tensor>& key_padding_mask, const std::optional<Tensor>& rel_table,
    const std::optional<Tensor>& rel_lut, bool rel_bidirectional, bool causal, double scale, double dropout_p,
    int64_t seed, int64_t sm_count, bool late_copies, int64_t schedule) {
  TORCH_CHECK(q.is_cpu(), "the emulator runs on CPU tensors, got q on ", q.device());
  AttentionFwdCall call = prepare_attention_fwd(q, k, v, attn_bias, key_padding_mask, rel_table, rel_lut,
                                                rel_bidirectional, causal, scale, dropout_p, seed);
  emu::configure(late_copies, static_cast<emu::SchedulePolicy>(schedule));
  const AttentionFwdPlan plan = run_attention_fwd(
      call, static_cast<int>(sm_count), [](const AttentionFwdParams& params, const AttentionFwdPlan& plan,
                                           float* workspace) {
        // NaN shows up in the output if the combine reads a partial result nobody wrote.
        std::fill(workspace, workspace + plan.workspace_floats, std::nanf(""));
        return attention_fwd(params, plan, workspace, nullptr);
      });
  return {call.out, call.lse, {plan.split_kv, plan.num_splits, plan.chunk_keys}};
}

}  // namespace

TORCH_LIBRARY(fastformer_emu, m) {
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? attn_bias, Tensor? key_padding_mask,"
        " Tensor? rel_table, Tensor? rel_lut, bool rel_bidirectional, bool causal, float scale,"
        " float dropout_p, int seed, int sm_count, bool late_copies, int schedule)"
        " -> (Tensor out, Tensor lse, int[] plan)",
        &attention_fwd_emulated);
}

}  // namespace fastformer::cuda
