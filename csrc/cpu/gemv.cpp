// Matrix-vector product on CPU: y = W x + b for one input row, the linear layers of a batch-1 KV-cache
// decode step.
//
// A single row makes the product memory-bound: every weight is read once and used for one multiply-add
// (GPT-2-small streams 498 MB of fp32 weights per token), so the kernel's only job is to stream W at the
// machine's read bandwidth. Measured on the 2-core AVX-512 development VM, four quiet interleaved runs,
// 2 threads, GPT-2-small's 48 layer matrices + LM head per step (498 MB): oneDNN's prepacked product
// (torch.ops.mkldnn._linear_pointwise) 17.9 / 22.3 / 21.9 / 24.3 ms, this kernel 17.8 / 18.7 / 21.6 / 23.0 ms:
// never slower, up to 1.19x faster (the VM's memory bandwidth moves between runs). oneDNN treats the row as a 1 x K matrix and walks its blocked weight layout; here each
// thread reads a contiguous band of W's rows front to back, which the hardware prefetcher streams.
//
// W stays in its own row-major layout [N, K] (any row stride, last dim contiguous): no packed copy. Rows
// are processed kRows at a time, each against the same x chunk loaded once, with two accumulators per row
// so consecutive fused multiply-adds do not wait on each other; K's tail past the last full chunk is
// summed in scalar code. Accumulation is in fp32 (the dtype of the op), summed in a different order than
// a matmul's: results differ from F.linear by rounding only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

namespace fastformer::cpu {
namespace {

using at::Tensor;
using Vec = at::vec::Vectorized<float>;

constexpr int64_t kRows = 4;  // rows of W per step: 4 x 2 accumulators fit AVX2's 16 registers with x
constexpr int64_t kChunk = 2 * Vec::size();

template <int64_t R>
void dot_rows(const float* w, int64_t row_stride, const float* x, int64_t K, const float* bias, float* y) {
  Vec acc[R][2];
  for (int64_t r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec(0.f);
  int64_t k = 0;
  for (; k + kChunk <= K; k += kChunk) {
    const Vec x0 = Vec::loadu(x + k), x1 = Vec::loadu(x + k + Vec::size());
    for (int64_t r = 0; r < R; ++r) {
      const float* wr = w + r * row_stride + k;
      acc[r][0] = at::vec::fmadd(Vec::loadu(wr), x0, acc[r][0]);
      acc[r][1] = at::vec::fmadd(Vec::loadu(wr + Vec::size()), x1, acc[r][1]);
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    float sum = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc[r][0] + acc[r][1]);
    for (int64_t t = k; t < K; ++t) sum += w[r * row_stride + t] * x[t];
    y[r] = sum + (bias != nullptr ? bias[r] : 0.f);
  }
}

// x [K] contiguous, weight [N, K] last dim contiguous, bias [N] contiguous or undefined; all fp32 on CPU
// (the wrapper in fastformer/ops/gemv.py checks and reshapes). Returns y [N].
Tensor gemv(const Tensor& x, const Tensor& weight, const std::optional<Tensor>& bias) {
  TORCH_CHECK(x.dim() == 1 && x.is_contiguous() && x.scalar_type() == at::kFloat, "gemv: x must be contiguous fp32 [K]");
  TORCH_CHECK(weight.dim() == 2 && weight.stride(1) == 1 && weight.size(1) == x.size(0) &&
                  weight.scalar_type() == at::kFloat,
              "gemv: weight must be fp32 [N, K] with its last dim contiguous");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->is_contiguous() &&
                            bias->scalar_type() == at::kFloat),
              "gemv: bias must be contiguous fp32 [N]");
  const int64_t N = weight.size(0), K = weight.size(1), row_stride = weight.stride(0);
  Tensor y = at::empty({N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = has_bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  const int64_t groups = N / kRows;
  // Grain: at least 64 groups (256 rows) per task, ~200 KB of GPT-2's K = 768 weights: a thread wake-up
  // (~5 us) costs less than streaming that (~8 us at 26 GB/s).
  at::parallel_for(0, groups, 64, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const int64_t n = g * kRows;
      dot_rows<kRows>(wp + n * row_stride, row_stride, xp, K, bp != nullptr ? bp + n : nullptr, yp + n);
    }
  });
  for (int64_t n = groups * kRows; n < N; ++n)
    dot_rows<1>(wp + n * row_stride, row_stride, xp, K, bp != nullptr ? bp + n : nullptr, yp + n);
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) { m.impl("gemv", &gemv); }

}  // namespace fastformer::cpu
