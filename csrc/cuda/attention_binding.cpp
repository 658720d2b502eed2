// torch.ops.fastformer.attention_fwd on CUDA tensors: the checks, allocation and launch sequence of
// attention_params.cpp on q's device and current stream, with the launcher of attention.cu.
// attention_bwd has no CUDA kernel: the Python layer runs the Triton backward on this op's out and lse.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "cuda/attention.h"
#include "cuda/attention_params.h"
#include "cuda/binding.h"

namespace fastformer::cuda {
namespace {

using at::Tensor;

std::tuple<Tensor, Tensor> attention_fwd_cuda(const Tensor& q, const Tensor& k, const Tensor& v,
                                              const std::optional<Tensor>& attn_bias,
                                              const std::optional<Tensor>& key_padding_mask,
                                              const std::optional<Tensor>& rel_table,
                                              const std::optional<Tensor>& rel_lut, bool rel_bidirectional,
                                              bool causal, double scale, double dropout_p, int64_t seed) {
  TORCH_CHECK(q.is_cuda(), "q must be a CUDA tensor, got ", q.device());
  const c10::cuda::CUDAGuard guard(q.device());
  AttentionFwdCall call = prepare_attention_fwd(q, k, v, attn_bias, key_padding_mask, rel_table, rel_lut,
                                                rel_bidirectional, causal, scale, dropout_p, seed);
  int sm_count = 0;
  check_launch(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, q.get_device()), "attention_fwd");
  const cudaStream_t stream = current_stream(q);
  run_attention_fwd(call, sm_count, [stream](const AttentionFwdParams& params, const AttentionFwdPlan& plan,
                                             float* workspace) { return attention_fwd(params, plan, workspace, stream); });
  return {call.out, call.lse};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CUDA, m) { m.impl("attention_fwd", &attention_fwd_cuda); }

}  // namespace fastformer::cuda
