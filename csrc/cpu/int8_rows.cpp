// Per-row int8 quantization around torch._int_mm, for fastformer.nn.Int8Linear (CPU inference).
//
//   quantize_rows_int8:    x [M, K] fp32 -> q [M, K] int8 = round_half_even(x / s),
//                          s [M] = max(max|x row|, 1e-12) / 127
//   dequantize_rows_int32: acc [M, N] int32 -> (acc * row_scale[m]) * col_scale[n] (+ bias[n]), fp32
//
// Why a kernel: in Int8Linear written as ATen ops (abs, amax, div, round, to int8; to fp32, mul, mul, add) the
// element-wise passes took ~65% of an int8 BERT-base forward (profiled, batch 1 x 128, 2 threads), the int8
// GEMM itself 23%. Here each tensor is read once and written once. quantize_rows_int8 does the arithmetic of
// those ATen ops (a true division, round half to even) and matches them bit for bit; dequantize_rows_int32
// may contract its multiply-add into an FMA (within 1 ulp of the ATen result).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

namespace fastformer::cpu {
namespace {

using at::Tensor;

constexpr float kLevels = 127.0f;
constexpr float kTiny = 1e-12f;

// Rows per at::parallel_for task: about 16K elements each, so small matrices stay on one thread.
int64_t grain(int64_t cols) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1)); }

std::tuple<Tensor, Tensor> quantize_rows_int8(const Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.stride(1) == 1,
              "quantize_rows_int8: x must be a float32 [M, K] tensor with a contiguous last dim");
  const int64_t rows = x.size(0), cols = x.size(1), stride = x.stride(0);
  Tensor q = at::empty({rows, cols}, x.options().dtype(at::kChar));
  Tensor scale = at::empty({rows}, x.options());
  const float* x_ptr = x.const_data_ptr<float>();
  int8_t* q_ptr = q.data_ptr<int8_t>();
  float* s_ptr = scale.data_ptr<float>();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* xr = x_ptr + r * stride;
      int8_t* qr = q_ptr + r * cols;
      float amax = 0.0f;
#pragma omp simd reduction(max : amax)
      for (int64_t c = 0; c < cols; ++c) amax = std::max(amax, std::fabs(xr[c]));
      const float s = std::max(amax, kTiny) / kLevels;
      s_ptr[r] = s;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) qr[c] = static_cast<int8_t>(std::nearbyint(xr[c] / s));
    }
  });
  return {q, scale};
}

Tensor dequantize_rows_int32(const Tensor& acc, const Tensor& row_scale, const Tensor& col_scale,
                             const std::optional<Tensor>& bias) {
  TORCH_CHECK(acc.dim() == 2 && acc.scalar_type() == at::kInt && acc.is_contiguous(),
              "dequantize_rows_int32: acc must be a contiguous int32 [M, N] tensor");
  const int64_t rows = acc.size(0), cols = acc.size(1);
  TORCH_CHECK(row_scale.scalar_type() == at::kFloat && row_scale.is_contiguous() && row_scale.numel() == rows,
              "dequantize_rows_int32: row_scale must be a contiguous float32 [M] tensor");
  TORCH_CHECK(col_scale.scalar_type() == at::kFloat && col_scale.is_contiguous() && col_scale.numel() == cols,
              "dequantize_rows_int32: col_scale must be a contiguous float32 [N] tensor");
  TORCH_CHECK(!bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == cols),
              "dequantize_rows_int32: bias must be a contiguous float32 [N] tensor");
  Tensor out = at::empty({rows, cols}, acc.options().dtype(at::kFloat));
  const int32_t* a_ptr = acc.const_data_ptr<int32_t>();
  const float* rs = row_scale.const_data_ptr<float>();
  const float* cs = col_scale.const_data_ptr<float>();
  const float* b_ptr = bias ? bias->const_data_ptr<float>() : nullptr;
  float* o_ptr = out.data_ptr<float>();
  at::parallel_for(0, rows, grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int32_t* ar = a_ptr + r * cols;
      float* orow = o_ptr + r * cols;
      const float s = rs[r];
      if (b_ptr) {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) orow[c] = static_cast<float>(ar[c]) * s * cs[c] + b_ptr[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < cols; ++c) orow[c] = static_cast<float>(ar[c]) * s * cs[c];
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("quantize_rows_int8", &quantize_rows_int8);
  m.impl("dequantize_rows_int32", &dequantize_rows_int32);
}

}  // namespace fastformer::cpu
