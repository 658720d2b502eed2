// Matrix-vector product on CPU: y = W x + b for one input row, the linear layers of a batch-1 KV-cache
// decode step, in fp32 or bf16, and with int8 weights (gemv_int8: weight-only, fp32 activations).
//
// A single row makes the product memory-bound: every weight is read once and used for one multiply-add
// (GPT-2-small streams 498 MB of fp32 weights per token), so the kernel's only job is to stream W at the
// machine's read bandwidth. Measured on the 2-core AVX-512 development VM, four quiet interleaved runs,
// 2 threads, GPT-2-small's 48 layer matrices + LM head per step (498 MB): oneDNN's prepacked product
// (torch.ops.mkldnn._linear_pointwise) 17.9 / 22.3 / 21.9 / 24.3 ms, this kernel's first version (four rows
// interleaved, below) 17.8 / 18.7 / 21.6 / 23.0 ms: never slower, up to 1.19x faster (the VM's memory bandwidth
// moves between runs). oneDNN treats the row as a 1 x K matrix and walks its blocked weight layout; here each
// thread reads a contiguous band of W's rows front to back, which the hardware prefetcher streams.
//
// W stays in its own row-major layout [N, K] (any row stride, last dim contiguous): no packed copy. Each thread
// takes a contiguous band of rows and reads it front to back, one row at a time with four accumulators, so
// consecutive fused multiply-adds do not wait on each other; K's tail past the last full chunk is summed in scalar
// code. Reading rows one at a time keeps each thread's reads one sequential stream: four rows interleaved (each
// chunk of x against rows n..n+3) made four short streams of one row (3 KB at K = 768) each, which the hardware
// prefetcher follows worse. GPT-2-small's 49 decode products (498 MB, cold), 2 threads, same VM, 9 interleaved
// passes, two runs: 21.44 / 23.17 ms (23.0 / 21.3 GB/s) four rows interleaved, 17.30 / 18.35 ms (28.6 / 26.9 GB/s)
// one row at a time; software prefetch ahead made either slower. Accumulation is in fp32 (the dtype of the op),
// summed in a different order than a matmul's: results differ from F.linear by rounding only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <array>

namespace fastformer::cpu {
namespace {

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

constexpr int64_t kChunk = 4 * Vec::size();  // one chunk: a vector for each of the four accumulators

// One chunk of weights (kChunk of them) as four fp32 vectors: fp32 loaded as is, bf16 (half the bytes to stream)
// widened, which is exact.
inline std::array<Vec, 4> load_chunk(const float* w) {
  return {Vec::loadu(w), Vec::loadu(w + Vec::size()), Vec::loadu(w + 2 * Vec::size()),
          Vec::loadu(w + 3 * Vec::size())};
}
inline std::array<Vec, 4> load_chunk(const c10::BFloat16* w) {
  using BVec = at::vec::Vectorized<c10::BFloat16>;
  static_assert(BVec::size() == 2 * Vec::size(), "a bf16 vector widens to two fp32 vectors");
  const auto [a, b] = at::vec::convert_bfloat16_float(BVec::loadu(w));
  const auto [c, d] = at::vec::convert_bfloat16_float(BVec::loadu(w + BVec::size()));
  return {a, b, c, d};
}

// int8 weights (ff.nn.Int8Linear's, a quarter of fp32's bytes) widened to fp32, exactly.
inline std::array<Vec, 4> load_chunk(const int8_t* w) {
#if defined(CPU_CAPABILITY_AVX2)
  static_assert(Vec::size() == 8, "one AVX2 fp32 vector per 8 int8 weights");
  const auto widen = [](const int8_t* p) {
    return Vec(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))));
  };
  return {widen(w), widen(w + 8), widen(w + 16), widen(w + 24)};
#else
  float wide[kChunk];
  for (int64_t i = 0; i < kChunk; ++i) wide[i] = static_cast<float>(w[i]);
  return load_chunk(static_cast<const float*>(wide));
#endif
}

// w . x over K elements (w and x contiguous; x in fp32), accumulated in fp32.
template <typename T>
float dot_row(const T* w, const float* x, int64_t K) {
  Vec acc[4] = {Vec(0.f), Vec(0.f), Vec(0.f), Vec(0.f)};
  int64_t k = 0;
  for (; k + kChunk <= K; k += kChunk) {
    const std::array<Vec, 4> wk = load_chunk(w + k);
    for (int i = 0; i < 4; ++i) acc[i] = at::vec::fmadd(wk[i], Vec::loadu(x + k + i * Vec::size()), acc[i]);
  }
  const Vec total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, total);
  for (; k < K; ++k) sum += static_cast<float>(w[k]) * x[k];
  return sum;
}

// write(n, w[n] . x) for every row n of w [N, K] (row stride row_stride), each thread taking a contiguous band.
// Grain: at least ~750 KB of weights per task (256 fp32 rows of GPT-2's K = 768): a thread wake-up (~5 us) costs
// less than streaming that (~28 us at 27 GB/s).
template <typename T, typename Write>
void for_each_row_dot(const T* w, int64_t row_stride, const float* x, int64_t N, int64_t K, const Write& write) {
  at::parallel_for(0, N, 256 * sizeof(float) / sizeof(T), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) write(n, dot_row(w + n * row_stride, x, K));
  });
}

template <typename T>
void gemv_rows(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias, Tensor& y) {
  const Tensor x_float = x.to(at::kFloat);  // [K], read once per row: widened once
  const T* bp = bias ? bias->const_data_ptr<T>() : nullptr;
  T* yp = y.data_ptr<T>();
  for_each_row_dot(weight.const_data_ptr<T>(), weight.stride(0), x_float.const_data_ptr<float>(), weight.size(0),
                   weight.size(1), [&](int64_t n, float dot) {
                     yp[n] = static_cast<T>(dot + (bp != nullptr ? static_cast<float>(bp[n]) : 0.f));
                   });
}

// x [K] contiguous, weight [N, K] last dim contiguous, bias [N] contiguous or undefined; all fp32, or all bf16 (fp32
// accumulation, the result rounded once, as oneDNN's bf16 product), on CPU (the wrapper in fastformer/ops/gemv.py
// checks and reshapes). Returns y [N].
Tensor gemv(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(x.dim() == 1 && x.is_contiguous() && (dtype == at::kFloat || dtype == at::kBFloat16),
              "gemv: x must be contiguous fp32 or bf16 [K]");
  TORCH_CHECK(weight.dim() == 2 && weight.stride(1) == 1 && weight.size(1) == x.size(0) &&
                  weight.scalar_type() == dtype,
              "gemv: weight must be [N, K] of x's dtype with its last dim contiguous");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->is_contiguous() &&
                            bias->scalar_type() == dtype),
              "gemv: bias must be contiguous [N] of x's dtype");
  Tensor y = at::empty({weight.size(0)}, x.options());
  const std::optional<Tensor> used_bias = has_bias ? bias : std::nullopt;
  if (dtype == at::kFloat)
    gemv_rows<float>(x, weight, used_bias, y);
  else
    gemv_rows<c10::BFloat16>(x, weight, used_bias, y);
  return y;
}

// The weight-only int8 product of one row: y [N] = weight_scale * (weight_int8 @ x) + bias, x [K] fp32
// contiguous, weight_int8 [N, K] int8 with its last dim contiguous, weight_scale [N] and bias [N] fp32 contiguous
// (ff.nn.Int8Linear's buffers). The int8 weights are exact in fp32, so this is the fp32 product with the quantized
// weight, accumulated as gemv's.
Tensor gemv_int8(const Tensor& x, const Tensor& weight_int8, const Tensor& weight_scale,
                 const std::optional<Tensor>& bias) {
  TORCH_CHECK(x.dim() == 1 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "gemv_int8: x must be contiguous fp32 [K]");
  TORCH_CHECK(weight_int8.dim() == 2 && weight_int8.stride(1) == 1 && weight_int8.size(1) == x.size(0) &&
                  weight_int8.scalar_type() == at::kChar,
              "gemv_int8: weight_int8 must be int8 [N, K] with its last dim contiguous");
  const int64_t N = weight_int8.size(0);
  TORCH_CHECK(weight_scale.dim() == 1 && weight_scale.size(0) == N && weight_scale.is_contiguous() &&
                  weight_scale.scalar_type() == at::kFloat,
              "gemv_int8: weight_scale must be contiguous fp32 [N]");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous() &&
                            bias->scalar_type() == at::kFloat),
              "gemv_int8: bias must be contiguous fp32 [N]");
  Tensor y = at::empty({N}, x.options());
  const float* sp = weight_scale.const_data_ptr<float>();
  const float* bp = has_bias ? bias->const_data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  for_each_row_dot(weight_int8.const_data_ptr<int8_t>(), weight_int8.stride(0), x.const_data_ptr<float>(), N,
                   weight_int8.size(1),
                   [&](int64_t n, float dot) { yp[n] = sp[n] * dot + (bp != nullptr ? bp[n] : 0.f); });
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("gemv", &gemv);
  m.impl("gemv_int8", &gemv_int8);
}

}  // namespace fastformer::cpu
