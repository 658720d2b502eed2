// Vectorized load/store of one row chunk as the accumulation type (float for fp32/bf16/fp16,
// double for fp64), so every CPU kernel is written once over at::vec::Vectorized<acc_t>.
//
// A chunk is two accumulation vectors (16 floats with AVX2): that is one Vectorized<BFloat16>,
// which converts to exactly two float vectors.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace fastformer::cpu {

template <typename scalar_t>
struct RowIO {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = at::vec::Vectorized<acc_t>;
  static constexpr int64_t kVec = Vec::size();
  static constexpr int64_t kChunk = 2 * kVec;
  static constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;

  // Loads n <= kChunk elements (the rest read as zero).
  static void load(const scalar_t* p, Vec& lo, Vec& hi, int64_t n = kChunk) {
    if constexpr (kReduced) {
      auto v = n == kChunk ? at::vec::Vectorized<scalar_t>::loadu(p)
                           : at::vec::Vectorized<scalar_t>::loadu(p, n);
      std::tie(lo, hi) = at::vec::convert_to_float<scalar_t>(v);
    } else if (n == kChunk) {
      lo = Vec::loadu(p);
      hi = Vec::loadu(p + kVec);
    } else {
      lo = Vec::loadu(p, std::min(n, kVec));
      hi = n > kVec ? Vec::loadu(p + kVec, n - kVec) : Vec(acc_t(0));
    }
  }

  // Stores the first n <= kChunk elements.
  static void store(scalar_t* p, const Vec& lo, const Vec& hi, int64_t n = kChunk) {
    if constexpr (kReduced) {
      auto v = at::vec::convert_from_float<scalar_t>(lo, hi);
      n == kChunk ? v.store(p) : v.store(p, n);
    } else if (n == kChunk) {
      lo.store(p);
      hi.store(p + kVec);
    } else {
      lo.store(p, std::min(n, kVec));
      if (n > kVec) hi.store(p + kVec, n - kVec);
    }
  }
};

// Number of rows per at::parallel_for task so one task touches at least ~32K elements: smaller
// tasks are dominated by the ~1 us OpenMP hand-off at BERT-sized rows (768 columns).
inline int64_t rows_per_task(int64_t cols) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(cols, 1)); }

}  // namespace fastformer::cpu
