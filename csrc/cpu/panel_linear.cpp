// The fp32 linear of a few rows on CPU: y [M, N] = act(x [M, K] W^T + b) for 2 <= M <= 64, the products of an
// encoder forward on one or a few short sentences, from W packed once into column panels.
//
// At a few rows a product is neither compute- nor memory-bound alone: every weight is used M times, so the
// arithmetic (2 M flops per 4-byte weight) takes about as long as streaming the weights from memory, and what
// matters is overlapping the two. oneDNN's prepacked product (torch.ops.mkldnn._linear_pointwise) also costs
// ~15-20 us of fixed work per call (primitive attributes, memory descriptors, its scratchpad: 22.8 us for a 32 x 32
// product from Python), 24 calls per all-MiniLM-L6-v2 forward. Measured on the 2-core AVX-512 development VM,
// 2 threads, the 24 products of all-MiniLM-L6-v2 (42.5 MB of weights, cold) called in turn from Python, medians of
// 100 interleaved passes (bench/panel_linear_cpu.py, load ~2.1), this kernel / oneDNN: 2 rows 1.57 / 2.59 ms, 8 rows
// 2.13 / 2.78, 18 rows 2.56 / 3.43, 32 rows 4.02 / 4.67, 48 rows 5.31 / 6.18, 64 rows 6.75 / 7.56, 96 rows 10.29 /
// 10.93, 128 rows 13.68 / 13.96. One thread, weights hot: 108-113 GFLOP/s against oneDNN's 92-103. ff.nn.Linear
// runs it up to 64 rows.
//
// Layout: W [N, K] is packed as panels [N / 16, K, 16]: panel p holds output columns 16p..16p+15, one 64-byte line
// per k, so a panel streams front to back as one sequential read. Each thread takes a contiguous band of panels.
// For each panel, tiles of up to 6 rows keep 6 x 2 vectors of y in registers (12 of AVX2's 16), and each k step
// loads the panel's line once, broadcasts the 6 x values and issues 12 fused multiply-adds. The first tile of a
// panel reads it from memory (or L2), the other tiles from L1/L2; meanwhile each tile prefetches its share of the
// next panel into L2 (prefetcht2), one line per k step, so the memory stream runs during every tile, not only the
// first. Measured at 18 rows, time over oneDNN's in the same runs (bench/panel_linear_cpu.py or its prototype):
// no software prefetch 0.86-1.04; the first tile prefetching 48 lines ahead into L1 0.86-0.87; the next panel spread
// over the tiles into L1 0.88-1.09 (it evicts the current panel, which the later tiles reread); into L2
// (prefetcht1 / t2) 0.76-0.78 / 0.76-0.82. Bias is the accumulators' start value; the activation runs on them
// before the store. Accumulation is in fp32 in k order: results differ from a matmul's by rounding
// only.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>

#include "cpu/block_ops.h"

// The kernel is written for AVX2 + FMA (16 vector registers of 8 floats); a build without them registers no kernel
// for these ops and ff.nn.Linear keeps oneDNN (fastformer/ops/panel_linear.py AVAILABLE).
#if defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>

namespace fastformer::cpu {
namespace {

using at::Tensor;

constexpr int64_t kPanel = 16;            // output columns per panel: one 64-byte line per k
constexpr int kTileRows = 6;              // 6 x 2 accumulators: 12 of AVX2's 16 vector registers

// The activations, applied to each tile's accumulators after its k loop, before the store. Run instead by ATen on
// each thread's band after its tiles, GELU added 34 us to an [18, 384] x [384, 1536] product that takes 103 us
// without it (ATen's kernel on the [18, 768] band alone: 11 us), and at::vec's erf on the tile (a Sleef exp call and
// a division per vector) added 130 us at 128 rows where oneDNN's fused GELU adds 35-52; GeluErf below adds 11 us at
// 18 rows and ~70 at 128 (2 threads, the one product timed alone with warm weights, load ~1.4).
struct NoActivation {
  static __m256 apply(__m256 x) { return x; }
};

struct Relu {
  static __m256 apply(__m256 x) { return _mm256_max_ps(_mm256_setzero_ps(), x); }  // NaN stays NaN, as torch.relu
};

// exp(x) for x <= 0 (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial in r, times 2^n); below -87.3,
// where 2^n would leave the normal range, it returns exp(-87.3) ~ 1e-38 instead of a denormal or 0.
inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT |
                                                                                       _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);  // ln2 in two parts: r exact to ~1 ulp
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}

// GELU(x) = x / 2 * (1 + erf(x / sqrt 2)) with erfc(|z|) = t P(t) exp(-z^2), t = 1 / (1 + 0.3275911 |z|)
// (Abramowitz & Stegun 7.1.26, absolute error <= 1.5e-7, as ATen's own AVX2 erf): 1 + erf(z) is 2 - erfc(|z|) for
// z >= 0 and erfc(|z|) itself below, so negative inputs lose nothing to cancellation. Within 4e-7 of fp64 GELU
// over [-12, 12] (tests/ops/test_panel_linear.py bounds it by 5e-7; ATen's fp32 at::gelu is off by 9.8e-7 there).
struct GeluErf {
  static __m256 apply(__m256 x) {
    const __m256 z = _mm256_mul_ps(x, _mm256_set1_ps(0.70710678f));
    const __m256 abs_z = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
    const __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(abs_z, _mm256_set1_ps(0.3275911f),
                                                                         _mm256_set1_ps(1.0f)));
    __m256 poly = _mm256_set1_ps(1.061405429f);
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-1.453152027f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(1.421413741f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(-0.284496736f));
    poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(0.254829592f));
    const __m256 erfc_abs = _mm256_mul_ps(_mm256_mul_ps(poly, t), exp_nonpositive(_mm256_mul_ps(_mm256_xor_ps(
                                                                      _mm256_set1_ps(-0.0f), z), z)));
    const __m256 one_plus_erf = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), erfc_abs), erfc_abs, z);
    return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_set1_ps(0.5f)), one_plus_erf);
  }
};

// GELU's tanh form and SiLU in the vector form of ATen's own kernels (at::vec's tanh and exp): bit for bit what
// at::gelu_(t, "tanh") and at::silu_ give.
struct GeluTanh {
  static __m256 apply(__m256 v) {
    using Vec = at::vec::Vectorized<float>;
    const Vec x(v), inner = Vec(float(M_SQRT2 * M_2_SQRTPI * 0.5)) * (x + Vec(0.044715f) * (x * x * x));
    return Vec(0.5f) * x * (Vec(1.0f) + inner.tanh());
  }
};

struct Silu {
  static __m256 apply(__m256 v) {
    using Vec = at::vec::Vectorized<float>;
    const Vec x(v);
    return x / (Vec(1.0f) + x.neg().exp());
  }
};

// y rows [rows, 16] (row stride ldy) = x rows [rows, K] (row stride ldx) . panel [K, 16] + bias [16];
// prefetch_lines lines of `prefetch` are prefetched, one per k step.
template <typename Activation, int kRows>
void panel_tile(const float* panel, const float* x, int64_t ldx, int64_t K, const float* bias, float* y, int64_t ldy,
                const float* prefetch, int64_t prefetch_lines) {
  // AVX2 intrinsics, fully unrolled over the rows: written with at::vec::Vectorized (or the row loops not unrolled),
  // GCC kept the accumulators on the stack through the k loop, at 36-45 GFLOP/s instead of 108-113 (1 thread).
  __m256 acc[kRows][2];
  const __m256 bias0 = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
  const __m256 bias1 = bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    acc[r][0] = bias0;
    acc[r][1] = bias1;
  }
  for (int64_t k = 0; k < K; ++k) {
    if (k < prefetch_lines) _mm_prefetch(reinterpret_cast<const char*>(prefetch + k * kPanel), _MM_HINT_T2);
    const __m256 w0 = _mm256_loadu_ps(panel + k * kPanel), w1 = _mm256_loadu_ps(panel + k * kPanel + 8);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m256 xv = _mm256_broadcast_ss(x + r * ldx + k);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    _mm256_storeu_ps(y + r * ldy, Activation::apply(acc[r][0]));
    _mm256_storeu_ps(y + r * ldy + 8, Activation::apply(acc[r][1]));
  }
}

// y [M, N] = act(x [M, K] W^T + bias), W in panels; each thread computes its band of panels.
template <typename Activation>
void panel_rows(const float* panels, int64_t panel_count, const float* x, int64_t M, int64_t K, const float* bias,
                float* y) {
  const int64_t N = panel_count * kPanel, panel_size = K * kPanel;
  // Each task streams at least ~64 KB of weights (a thread wake-up costs a few us; 64 KB stream in ~5).
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, panel_size * sizeof(float)));
  at::parallel_for(0, panel_count, grain, [&](int64_t p0, int64_t p1) {
    const int64_t tiles = (M + kTileRows - 1) / kTileRows, share = (K + tiles - 1) / tiles;
    for (int64_t p = p0; p < p1; ++p) {
      const float* panel = panels + p * panel_size;
      const float* b = bias ? bias + p * kPanel : nullptr;
      const float* next = panel + panel_size;  // prefetched by this panel's tiles, a share each (none past the band)
      for (int64_t m = 0; m < M; m += kTileRows) {
        const int64_t rows = std::min<int64_t>(kTileRows, M - m), t = m / kTileRows;
        const float* ahead = next + t * share * kPanel;
        const int64_t lines = p + 1 < p1 ? std::max<int64_t>(0, std::min<int64_t>(share, K - t * share)) : 0;
        const float* xm = x + m * K;
        float* ym = y + m * N + p * kPanel;
        switch (rows) {
          case 6: panel_tile<Activation, 6>(panel, xm, K, K, b, ym, N, ahead, lines); break;
          case 5: panel_tile<Activation, 5>(panel, xm, K, K, b, ym, N, ahead, lines); break;
          case 4: panel_tile<Activation, 4>(panel, xm, K, K, b, ym, N, ahead, lines); break;
          case 3: panel_tile<Activation, 3>(panel, xm, K, K, b, ym, N, ahead, lines); break;
          case 2: panel_tile<Activation, 2>(panel, xm, K, K, b, ym, N, ahead, lines); break;
          default: panel_tile<Activation, 1>(panel, xm, K, K, b, ym, N, ahead, lines); break;
        }
      }
    }
  });
}

// panel_rows with the activation named ("none" or an Activation's name; any other raises the blocks' error).
using PanelRows = void (*)(const float*, int64_t, const float*, int64_t, int64_t, const float*, float*);
PanelRows panel_rows_for(c10::string_view activation) {
  if (activation == "none") return panel_rows<NoActivation>;
  if (activation == "gelu") return panel_rows<GeluErf>;
  if (activation == "gelu_tanh") return panel_rows<GeluTanh>;
  if (activation == "relu") return panel_rows<Relu>;
  if (activation == "silu") return panel_rows<Silu>;
  block_ops::activation_named(activation, "panel_linear");  // the named error: no other name is valid
  return nullptr;
}

// weight [N, K] fp32 (any strides: splitting N is always a view), N a multiple of 16 -> panels [N / 16, K, 16].
Tensor pack_panels(const Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kFloat && weight.size(0) % kPanel == 0,
              "pack_panels: weight must be fp32 [N, K] with N a multiple of ", kPanel, ", got ", weight.sizes(), " ",
              weight.scalar_type());
  const int64_t N = weight.size(0), K = weight.size(1);
  return weight.view({N / kPanel, kPanel, K}).transpose(1, 2).contiguous();  // [N / 16, K, 16]
}

// x [..., K] fp32 contiguous, panels [N / 16, K, 16] fp32 contiguous (pack_panels), bias [N] fp32 contiguous or
// none -> act(x W^T + b) [..., N]. The wrapper in fastformer/ops/panel_linear.py checks the arguments.
Tensor panel_linear(const Tensor& x, const Tensor& panels, const std::optional<Tensor>& bias,
                    c10::string_view activation) {
  TORCH_CHECK(x.dim() >= 1 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "panel_linear: x must be contiguous fp32 [..., K]");
  const int64_t K = x.size(-1);
  TORCH_CHECK(panels.dim() == 3 && panels.is_contiguous() && panels.scalar_type() == at::kFloat &&
                  panels.size(1) == K && panels.size(2) == kPanel,
              "panel_linear: panels must be contiguous fp32 [N / ", kPanel, ", K=", K, ", ", kPanel, "], got ",
              panels.sizes());
  const int64_t N = panels.size(0) * kPanel, M = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->dim() == 1 && bias->size(0) == N && bias->is_contiguous() &&
                            bias->scalar_type() == at::kFloat),
              "panel_linear: bias must be contiguous fp32 [N=", N, "]");
  const PanelRows rows_kernel = panel_rows_for(activation);
  auto sizes = x.sizes().vec();
  sizes.back() = N;
  Tensor y = at::empty(sizes, x.options());
  if (M == 0 || N == 0) return y;
  rows_kernel(panels.const_data_ptr<float>(), panels.size(0), x.const_data_ptr<float>(), M, K,
              has_bias ? bias->const_data_ptr<float>() : nullptr, y.data_ptr<float>());
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("pack_panels", &pack_panels);
  m.impl("panel_linear", &panel_linear);
}

}  // namespace fastformer::cpu
#endif  // CPU_CAPABILITY_AVX2
