// Input checks, launcher parameters and the launch sequence of attention_fwd (attention_params.h).
#include "cuda/attention_params.h"

#include <cmath>
#include <cstdint>
#include <limits>

#include "cuda/binding.h"

namespace fastformer::cuda {
namespace {

using at::Tensor;

void check_on_device_of(const Tensor& t, const char* name, const Tensor& q) {
  TORCH_CHECK(t.device() == q.device(), name, " must be on ", q.device(), " like q, got ", t.device());
}

// q, k, v: rank 4, same dtype and device, last dim contiguous, k/v shapes matching q's (GQA allowed).
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "q, k, v must be 4-D [B, H, S, D], got q ", q.sizes(),
              ", k ", k.sizes(), ", v ", v.sizes());
  dtype_of(q, "q");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "k and v must have q's dtype ", q.scalar_type(), ", got k ", k.scalar_type(), ", v ", v.scalar_type());
  check_on_device_of(k, "k", q);
  check_on_device_of(v, "v", q);
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D, "k must be [B, Hkv, Sk, D] = [", B, ", Hkv, Sk, ", D,
              "] to match q ", q.sizes(), ", got ", k.sizes());
  TORCH_CHECK(v.sizes() == k.sizes(), "v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(Hkv >= 1 && H % Hkv == 0, "q's heads (", H, ") must be a multiple of k's heads (", Hkv, ")");
  TORCH_CHECK(attention_head_dim_supported(D), "head dim must be 32, 64, 80, 96, 128 or 256 on CUDA, got ", D);
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1,
              "q, k, v must have a contiguous last dim (stride 1), got strides q ", q.strides(), ", k ", k.strides(),
              ", v ", v.strides());
}

// Float additive tables (attn_bias, rel_table) come as q's dtype or float32.
DType check_float_table(const Tensor& t, const char* name, const Tensor& q) {
  check_on_device_of(t, name, q);
  TORCH_CHECK(t.scalar_type() == q.scalar_type() || t.scalar_type() == at::kFloat, name,
              " must have q's dtype ", q.scalar_type(), " or float32, got ", t.scalar_type());
  return dtype_of(t, name);
}

bool all_16b_aligned(const Tensor& t) {
  const int64_t elements_per_16b = 16 / t.element_size();
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) return false;
  for (int dim = 0; dim < 3; ++dim) {
    if (t.stride(dim) % elements_per_16b != 0) return false;
  }
  return true;
}

template <size_t N>
void copy_strides(int64_t (&dst)[N], const Tensor& t) {
  for (size_t i = 0; i < N; ++i) dst[i] = t.stride(static_cast<int64_t>(i));
}

}  // namespace

AttentionFwdCall prepare_attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v,
                                       const std::optional<Tensor>& attn_bias,
                                       const std::optional<Tensor>& key_padding_mask,
                                       const std::optional<Tensor>& rel_table, const std::optional<Tensor>& rel_lut,
                                       bool rel_bidirectional, bool causal, double scale, double dropout_p,
                                       int64_t seed) {
  check_qkv(q, k, v);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Hkv = k.size(1), Sk = k.size(2);
  TORCH_CHECK(std::isfinite(scale), "scale must be finite, got ", scale);
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p <= 1.0, "dropout_p must be in [0, 1], got ", dropout_p);

  AttentionFwdParams p{};
  p.dtype = dtype_of(q, "q");
  p.batch = B;
  p.heads = H;
  p.kv_heads = Hkv;
  p.seqlen_q = Sq;
  p.seqlen_k = Sk;
  p.head_dim = D;
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  copy_strides(p.q_stride, q);
  copy_strides(p.k_stride, k);
  copy_strides(p.v_stride, v);
  p.qkv_16b_aligned = all_16b_aligned(q) && all_16b_aligned(k) && all_16b_aligned(v);

  if (attn_bias) {
    p.bias_dtype = check_float_table(*attn_bias, "attn_bias", q);
    TORCH_CHECK(attn_bias->sizes() == at::IntArrayRef({B, H, Sq, Sk}),
                "attn_bias must be expanded to [B, H, Sq, Sk] = [", B, ", ", H, ", ", Sq, ", ", Sk, "], got ",
                attn_bias->sizes());
    p.bias = attn_bias->const_data_ptr();
    copy_strides(p.bias_stride, *attn_bias);
  }
  if (key_padding_mask) {
    check_on_device_of(*key_padding_mask, "key_padding_mask", q);
    TORCH_CHECK(key_padding_mask->scalar_type() == at::kBool, "key_padding_mask must be bool, got ",
                key_padding_mask->scalar_type());
    TORCH_CHECK(key_padding_mask->sizes() == at::IntArrayRef({B, Sk}), "key_padding_mask must be [B, Sk] = [", B,
                ", ", Sk, "], got ", key_padding_mask->sizes());
    p.key_padding_mask = key_padding_mask->const_data_ptr<bool>();
    copy_strides(p.key_padding_mask_stride, *key_padding_mask);
  }
  TORCH_CHECK(rel_table.has_value() == rel_lut.has_value(), "rel_table and rel_lut must be given together");
  if (rel_table) {
    p.rel_table_dtype = check_float_table(*rel_table, "rel_table", q);
    TORCH_CHECK(rel_table->dim() == 2 && rel_table->size(0) >= 1 && rel_table->size(1) == H,
                "rel_table must be [num_buckets >= 1, H = ", H, "], got ", rel_table->sizes());
    check_on_device_of(*rel_lut, "rel_lut", q);
    TORCH_CHECK(rel_lut->scalar_type() == at::kInt, "rel_lut must be int32, got ", rel_lut->scalar_type());
    TORCH_CHECK(rel_lut->dim() == 1 && rel_lut->size(0) >= 1, "rel_lut must be 1-D and non-empty, got ",
                rel_lut->sizes());
    p.rel_table = rel_table->const_data_ptr();
    copy_strides(p.rel_table_stride, *rel_table);
    p.num_buckets = rel_table->size(0);
    p.rel_lut = rel_lut->const_data_ptr<int32_t>();
    p.rel_lut_stride = rel_lut->stride(0);
    p.rel_lut_len = rel_lut->size(0);
    p.rel_bidirectional = rel_bidirectional;
  }
  p.causal = causal;
  p.scale = static_cast<float>(scale);
  p.dropout_p = static_cast<float>(dropout_p);
  p.seed = static_cast<uint64_t>(seed);

  return {p, at::empty({B, H, Sq, D}, q.options()), at::empty({B, H, Sq}, q.options().dtype(at::kFloat))};
}

AttentionFwdPlan run_attention_fwd(AttentionFwdCall& call, int sm_count, const AttentionFwdLauncher& launch) {
  AttentionFwdParams& p = call.params;
  if (call.out.numel() == 0) return {};
  if (p.seqlen_k == 0) {  // no keys: every row is fully masked
    call.out.zero_();
    call.lse.fill_(std::numeric_limits<float>::infinity());
    return {};
  }
  p.out = call.out.data_ptr();
  p.lse = call.lse.data_ptr<float>();
  const AttentionFwdPlan plan = plan_attention_fwd(p, sm_count);
  TORCH_CHECK(plan.grid_ctas <= std::numeric_limits<int32_t>::max(), "attention_fwd on CUDA: ", plan.grid_ctas,
              " thread blocks for q ", call.out.sizes(), " and ", p.seqlen_k, " keys exceed the grid limit of 2^31 - 1");
  Tensor workspace;  // [workspace_floats] partial results of the split-KV kernel
  if (plan.workspace_floats > 0) workspace = at::empty({plan.workspace_floats}, call.lse.options());
  check_launch(launch(p, plan, plan.workspace_floats > 0 ? workspace.data_ptr<float>() : nullptr), "attention_fwd");
  return plan;
}

}  // namespace fastformer::cuda
