// Softmax on CPU, forward and backward: y = softmax over the last dim of z = x * scale + mask.
//
// Forward, per row, three passes with the row held in L1 (a 1024-column fp32 row is 4 KB):
//   1. z = x * scale (+ additive mask | -inf where a bool mask drops) into an acc_t buffer, with
//      the row max;
//   2. e = exp(z - max) in place, with the row sum;
//   3. y = e / sum, converted to the output dtype.
// x and the mask are read from memory once and y is written once; PyTorch's unfused
// `torch.softmax(x * scale + mask, -1)` writes and re-reads two full-size temporaries.
// Causal rows only touch their kept prefix and write zeros after it. A row whose every column is
// dropped (max = -inf) gives zeros. Rows are split across threads with at::parallel_for; each
// task allocates its buffers once.
//
// Masks are read in place when their last dim is contiguous and their dtype loads with RowIO
// (the dtype of x, or float32 for fp32/bf16/fp16 x). Otherwise (bool masks, a strided or
// broadcast last dim, float32 masks for fp64 x) each distinct mask row is converted once into an
// acc_t buffer; consecutive rows that share a mask row (a [B, 1, 1, N] padding mask broadcast
// over heads and queries) reuse the conversion.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/row_io.h"

namespace fastformer::cpu {
namespace {

using at::Tensor;

// How a row's mask values enter z.
enum class MaskKind {
  kNone,      // z = x * scale
  kAdditive,  // z = x * scale + mask
  kKeep,      // z = keep != 0 ? x * scale : -inf (keep: converted bool mask, 1 = keep)
};

// exp(x) for the x = z - max <= 0 of pass 2, about 2x faster than Sleef's expf8_u10 (0.50 vs 1.10 ns
// per element in an L1-resident loop with AVX2 on the development machine) at <= 1.26 ULP over
// [-86, 0] (measured against double exp at 16M points; Sleef: 0.98 ULP). x = n ln2 + r with
// |r| <= ln2 / 2 (ln2 split in two for an exact n ln2), exp(r) = 1 + r + r^2 p(r) with p of degree 4
// fitted for relative error (3e-9, ~0.05 ULP), 2^n built from exponent bits. Below -86 (exp < 5e-38,
// 2^-124) the result is 0, so -inf (a dropped column) gives exactly 0; NaN stays NaN. The cut-off
// keeps every product normal: a denormal result costs a microcode assist, which made rows with -inf
// masks 2.2x slower (1.46 vs 0.65 ns per element) with the cut-off at ln(FLT_MIN).
inline at::vec::Vectorized<float> exp_nonpositive(const at::vec::Vectorized<float>& x) {
  using Vec = at::vec::Vectorized<float>;
  using IVec = at::vec::Vectorized<int32_t>;
  const Vec lowest(-86.f);  // n >= -124, so p * 2^n >= 0.7 * 2^-124 is normal
  const Vec xc = at::vec::clamp_min(x, lowest);  // NaN stays NaN
  // Adding 1.5 * 2^23 rounds x * log2(e) to the integer n and leaves n in the low mantissa bits of t.
  const Vec shifter(12582912.f);
  const Vec t = at::vec::fmadd(xc, Vec(1.44269504088896341f), shifter);
  const Vec n = t - shifter;
  Vec r = at::vec::fnmadd(n, Vec(0.693359375f), xc);  // high part of ln2 (exact in 9 bits)
  r = at::vec::fnmadd(n, Vec(-2.12194440e-4f), r);    // ln2 - 0.693359375
  Vec p = at::vec::fmadd(Vec(1.381461276e-03f), r, Vec(8.368710056e-03f));
  p = at::vec::fmadd(p, r, Vec(4.166838899e-02f));
  p = at::vec::fmadd(p, r, Vec(1.666652113e-01f));
  p = at::vec::fmadd(p, r, Vec(4.999999404e-01f));
  p = at::vec::fmadd(p, r * r, r + Vec(1.f));
  // (bits(t) << 23) keeps n << 23 (the shifter's bits shift out); adding 127 << 23 makes it 2^n.
  const Vec two_to_n = at::vec::cast<float>((at::vec::cast<int32_t>(t) << IVec(23)) + IVec(127 << 23));
  return Vec::blendv(p * two_to_n, Vec(0.f), x < lowest);
}

// fp64 (gradcheck, not speed): Sleef's exp.
inline at::vec::Vectorized<double> exp_nonpositive(const at::vec::Vectorized<double>& x) { return x.exp(); }

int64_t padded_cols(int64_t cols, int64_t chunk) { return at::divup(std::max<int64_t>(cols, 1), chunk) * chunk; }

// Mask rows read in place.
template <typename mask_t>
struct DirectMaskRows {
  const mask_t* base;
  const mask_t* row(int64_t offset) { return base + offset; }
};

// Mask rows converted to acc_t: bool -> 1 (keep) / 0 (drop), floats -> acc_t; any column stride.
template <typename acc_t>
struct ConvertedMaskRows {
  const void* base;  // element (0, 0, 0, 0) of the mask
  at::ScalarType dtype;
  int64_t col_stride, cols;
  std::vector<acc_t> buf;  // allocated by the first row() of each task
  int64_t cached_offset = -1;

  const acc_t* row(int64_t offset) {
    if (buf.empty()) buf.assign(padded_cols(cols, RowIO<acc_t>::kChunk), acc_t(0));
    if (offset != cached_offset) {
      AT_DISPATCH_FLOATING_TYPES_AND3(at::kBFloat16, at::kHalf, at::kBool, dtype, "fastformer_softmax_mask", [&] {
        const scalar_t* src = static_cast<const scalar_t*>(base) + offset;
        if (col_stride == 1) {  // the common layout; a loop the compiler vectorizes
          std::transform(src, src + cols, buf.begin(), [](scalar_t v) { return static_cast<acc_t>(v); });
        } else {
          for (int64_t c = 0; c < cols; ++c) buf[c] = static_cast<acc_t>(src[c * col_stride]);
        }
      });
      cached_offset = offset;
    }
    return buf.data();
  }
};

struct NoMaskRows {
  const float* row(int64_t) { return nullptr; }
};

// One row: y[c] = softmax over c < kept of z[c]; y[c >= kept] = 0. buf holds padded_cols(kept) values.
template <typename scalar_t, MaskKind kKind, typename mask_t>
void softmax_row(const scalar_t* x, const mask_t* mask, int64_t kept, int64_t cols, at::opmath_type<scalar_t> scale,
                 at::opmath_type<scalar_t>* buf, scalar_t* y) {
  using IO = RowIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  constexpr int64_t kVec = IO::kVec, kChunk = IO::kChunk;
  const Vec neg_inf(-std::numeric_limits<acc_t>::infinity()), scale_v(scale), zero(acc_t(0));

  // Pass 1: z and its max. Lanes past `kept` in the last chunk are -inf, so pass 2 runs on whole vectors.
  const auto logits = [&](int64_t c, int64_t n, Vec& lo, Vec& hi) {
    IO::load(x + c, lo, hi, n);
    if constexpr (kKind == MaskKind::kAdditive) {
      Vec mlo, mhi;
      RowIO<mask_t>::load(mask + c, mlo, mhi, n);
      lo = at::vec::fmadd(lo, scale_v, mlo);
      hi = at::vec::fmadd(hi, scale_v, mhi);
    } else {
      lo = lo * scale_v;
      hi = hi * scale_v;
    }
    if constexpr (kKind == MaskKind::kKeep) {
      lo = Vec::blendv(neg_inf, lo, Vec::loadu(mask + c) != zero);
      hi = Vec::blendv(neg_inf, hi, Vec::loadu(mask + c + kVec) != zero);
    }
  };
  // clamp_min is one max instruction; it skips NaN z, which still turn the row into NaN in pass 2.
  Vec max_lo = neg_inf, max_hi = neg_inf;
  int64_t c = 0;
  for (; c + kChunk <= kept; c += kChunk) {
    Vec lo, hi;
    logits(c, kChunk, lo, hi);
    lo.store(buf + c);
    hi.store(buf + c + kVec);
    max_lo = at::vec::clamp_min(max_lo, lo);
    max_hi = at::vec::clamp_min(max_hi, hi);
  }
  if (c < kept) {
    const int64_t n = kept - c;
    Vec lo, hi;
    logits(c, n, lo, hi);
    lo = Vec::set(neg_inf, lo, std::min(n, kVec));
    hi = n > kVec ? Vec::set(neg_inf, hi, n - kVec) : neg_inf;
    lo.store(buf + c);
    hi.store(buf + c + kVec);
    max_lo = at::vec::clamp_min(max_lo, lo);
    max_hi = at::vec::clamp_min(max_hi, hi);
  }
  const acc_t row_max = at::vec::vec_reduce_all<acc_t>(
      [](Vec a, Vec b) { return at::vec::maximum(a, b); }, at::vec::maximum(max_lo, max_hi));

  if (row_max == -std::numeric_limits<acc_t>::infinity()) {
    // Every kept z is -inf or NaN: zeros (every column dropped), or NaN as PyTorch gives for a NaN.
    const bool has_nan = std::any_of(buf, buf + kept, [](acc_t v) { return std::isnan(v); });
    std::fill(y, y + cols, has_nan ? std::numeric_limits<scalar_t>::quiet_NaN() : scalar_t(0));
    return;
  }

  // Pass 2: e = exp(z - max) in place, and the sum; two accumulators halve the add dependency chain.
  const Vec max_v(row_max);
  Vec sum_lo(acc_t(0)), sum_hi(acc_t(0));
  const int64_t kept_padded = at::divup(kept, kChunk) * kChunk;
  for (c = 0; c < kept_padded; c += kChunk) {
    const Vec lo = exp_nonpositive(Vec::loadu(buf + c) - max_v);
    const Vec hi = exp_nonpositive(Vec::loadu(buf + c + kVec) - max_v);
    lo.store(buf + c);
    hi.store(buf + c + kVec);
    sum_lo = sum_lo + lo;
    sum_hi = sum_hi + hi;
  }
  const acc_t row_sum = at::vec::vec_reduce_all<acc_t>([](Vec a, Vec b) { return a + b; }, sum_lo + sum_hi);

  // Pass 3: normalize and store.
  const Vec inv_v(acc_t(1) / row_sum);
  for (c = 0; c < kept; c += kChunk) {
    IO::store(y + c, Vec::loadu(buf + c) * inv_v, Vec::loadu(buf + c + kVec) * inv_v, std::min(kChunk, kept - c));
  }
  std::fill(y + kept, y + cols, scalar_t(0));  // causal: columns after the kept prefix
}

template <typename scalar_t, MaskKind kKind, typename MaskRows>
void softmax_fwd_kernel(const Tensor& x, const std::optional<Tensor>& mask, MaskRows mask_rows, bool causal,
                        double scale, Tensor& out) {
  using IO = RowIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  const int64_t A = x.size(0), B = x.size(1), M = x.size(2), N = x.size(3);
  const scalar_t* x_ptr = x.const_data_ptr<scalar_t>();
  scalar_t* out_ptr = out.data_ptr<scalar_t>();
  const int64_t xs0 = x.stride(0), xs1 = x.stride(1), xs2 = x.stride(2);
  const int64_t ms0 = mask ? mask->stride(0) : 0, ms1 = mask ? mask->stride(1) : 0, ms2 = mask ? mask->stride(2) : 0;

  at::parallel_for(0, A * B * M, rows_per_task(N), [&](int64_t begin, int64_t end) {
    MaskRows task_mask_rows = mask_rows;  // per-task conversion buffer and cache
    std::vector<acc_t> buf(padded_cols(N, IO::kChunk));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t m = row % M, b = (row / M) % B, a = row / (M * B);
      const int64_t kept = causal ? std::clamp<int64_t>(m + N - M + 1, 0, N) : N;
      softmax_row<scalar_t, kKind>(x_ptr + a * xs0 + b * xs1 + m * xs2, task_mask_rows.row(a * ms0 + b * ms1 + m * ms2),
                                   kept, N, static_cast<acc_t>(scale), buf.data(), out_ptr + row * N);
    }
  });
}

template <typename scalar_t>
void softmax_fwd_dispatch_mask(const Tensor& x, const std::optional<Tensor>& mask, bool causal, double scale,
                               Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  if (!mask) {
    softmax_fwd_kernel<scalar_t, MaskKind::kNone>(x, mask, NoMaskRows{}, causal, scale, out);
    return;
  }
  const auto dtype = mask->scalar_type();
  const bool last_dim_contiguous = mask->stride(3) == 1 || mask->size(3) == 1;
  const ConvertedMaskRows<acc_t> converted{mask->const_data_ptr(), dtype, mask->stride(3), mask->size(3)};
  if (dtype == at::kBool) {
    softmax_fwd_kernel<scalar_t, MaskKind::kKeep>(x, mask, converted, causal, scale, out);
    return;
  }
  if (last_dim_contiguous && dtype == x.scalar_type()) {
    const DirectMaskRows<scalar_t> direct{mask->const_data_ptr<scalar_t>()};
    softmax_fwd_kernel<scalar_t, MaskKind::kAdditive>(x, mask, direct, causal, scale, out);
    return;
  }
  if constexpr (std::is_same_v<acc_t, float>) {  // float32 masks load as float vectors for fp32/bf16/fp16 x
    if (last_dim_contiguous && dtype == at::kFloat) {
      const DirectMaskRows<float> direct{mask->const_data_ptr<float>()};
      softmax_fwd_kernel<scalar_t, MaskKind::kAdditive>(x, mask, direct, causal, scale, out);
      return;
    }
  }
  softmax_fwd_kernel<scalar_t, MaskKind::kAdditive>(x, mask, converted, causal, scale, out);
}

// grad_x = scale * y * (dy - sum(dy * y)), per row of contiguous [rows, N] tensors.
template <typename scalar_t>
void softmax_bwd_kernel(const Tensor& grad_out, const Tensor& out, double scale, Tensor& grad_x) {
  using IO = RowIO<scalar_t>;
  using acc_t = typename IO::acc_t;
  using Vec = typename IO::Vec;
  const int64_t rows = out.size(0), cols = out.size(1);
  const scalar_t* dy_ptr = grad_out.const_data_ptr<scalar_t>();
  const scalar_t* y_ptr = out.const_data_ptr<scalar_t>();
  scalar_t* dx_ptr = grad_x.data_ptr<scalar_t>();
  const Vec scale_v(static_cast<acc_t>(scale));

  at::parallel_for(0, rows, rows_per_task(cols), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* dy = dy_ptr + row * cols;
      const scalar_t* y = y_ptr + row * cols;
      Vec dot_v(acc_t(0));
      for (int64_t c = 0; c < cols; c += IO::kChunk) {
        Vec ylo, yhi, dlo, dhi;
        IO::load(y + c, ylo, yhi, std::min(IO::kChunk, cols - c));
        IO::load(dy + c, dlo, dhi, std::min(IO::kChunk, cols - c));
        dot_v = at::vec::fmadd(ylo, dlo, at::vec::fmadd(yhi, dhi, dot_v));  // padding lanes load as 0
      }
      const Vec dot(at::vec::vec_reduce_all<acc_t>([](Vec a, Vec b) { return a + b; }, dot_v));
      scalar_t* dx = dx_ptr + row * cols;
      for (int64_t c = 0; c < cols; c += IO::kChunk) {
        const int64_t n = std::min(IO::kChunk, cols - c);
        Vec ylo, yhi, dlo, dhi;
        IO::load(y + c, ylo, yhi, n);
        IO::load(dy + c, dlo, dhi, n);
        IO::store(dx + c, scale_v * ylo * (dlo - dot), scale_v * yhi * (dhi - dot), n);
      }
    }
  });
}

#define FASTFORMER_SOFTMAX_DISPATCH(dtype, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dtype, "fastformer_softmax", __VA_ARGS__)

Tensor softmax_fwd(const Tensor& x, const std::optional<Tensor>& mask, double scale, bool causal) {
  TORCH_CHECK(x.dim() == 4, "x must be 4-D [A, B, M, N], got ", x.dim(), "-D");
  TORCH_CHECK(x.stride(3) == 1 || x.size(3) <= 1, "x must have a contiguous last dimension");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "x must be a floating-point tensor, got ", x.scalar_type());
  if (mask) {
    TORCH_CHECK(mask->sizes() == x.sizes(), "mask must be expanded to the shape of x ", x.sizes(), ", got ",
                mask->sizes());
    TORCH_CHECK(mask->device() == x.device(), "mask must be on the device of x (", x.device(), "), got ",
                mask->device());
    const auto dtype = mask->scalar_type();
    TORCH_CHECK(dtype == at::kBool || dtype == x.scalar_type() || dtype == at::kFloat,
                "mask must be bool, float32 or the dtype of x (", x.scalar_type(), "), got ", dtype);
  }
  Tensor out = at::empty(x.sizes(), x.options());  // [A, B, M, N], contiguous
  if (x.numel() > 0) {
    FASTFORMER_SOFTMAX_DISPATCH(x.scalar_type(), [&] { softmax_fwd_dispatch_mask<scalar_t>(x, mask, causal, scale, out); });
  }
  return out;
}

Tensor softmax_bwd(const Tensor& grad_out, const Tensor& out, double scale) {
  TORCH_CHECK(out.dim() == 2 && out.is_contiguous(), "out must be a contiguous [rows, N] tensor");
  TORCH_CHECK(grad_out.sizes() == out.sizes() && grad_out.is_contiguous(), "grad_out must be a contiguous tensor of shape ",
              out.sizes(), ", got ", grad_out.sizes());
  TORCH_CHECK(grad_out.scalar_type() == out.scalar_type(), "grad_out must have the dtype of out (", out.scalar_type(),
              "), got ", grad_out.scalar_type());
  TORCH_CHECK(at::isFloatingType(out.scalar_type()), "out must be a floating-point tensor, got ", out.scalar_type());
  Tensor grad_x = at::empty(out.sizes(), out.options());  // [rows, N]
  if (out.numel() > 0) {
    FASTFORMER_SOFTMAX_DISPATCH(out.scalar_type(), [&] { softmax_bwd_kernel<scalar_t>(grad_out, out, scale, grad_x); });
  }
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastformer, CPU, m) {
  m.impl("softmax_fwd", &softmax_fwd);
  m.impl("softmax_bwd", &softmax_bwd);
}

}  // namespace fastformer::cpu
