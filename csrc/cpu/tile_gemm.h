// Register-blocked GEMM on small tiles for the CPU attention kernels: C[M, N] (+)= A[M, K] B[K, N] in the
// accumulation type (float or double).
//
// A is read one scalar at a time (broadcast to a vector) through an element stride per row and per k, so a
// transposed operand (P^T when computing P V, dS^T when computing dS K) needs no copy. B and C are row-major with a
// row stride and contiguous columns. Each block keeps kRows x kVecs vectors of C in registers: 6 x 2 with AVX2 fp32
// is 12 of the 16 ymm registers, leaving room for the two B vectors and the broadcast A value, so one k step issues
// 12 FMAs for 2 vector loads and 6 broadcasts.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>

namespace fastformer::cpu {

struct GemmA {
  int64_t row_stride, k_stride;  // element (r, k) of A is at a[r * row_stride + k * k_stride]
};

namespace detail {

// One block of kRows rows and kVecs vectors of C; with kPartial the last vector has only last_count columns.
template <typename T, int kRows, int kVecs, bool kPartial>
inline void gemm_block(int64_t K, const T* a, GemmA a_layout, const T* b, int64_t ldb, T* c, int64_t ldc,
                       bool accumulate, int64_t last_count) {
  using Vec = at::vec::Vectorized<T>;
  constexpr int64_t kV = Vec::size();
  const auto load = [&](const T* p, int v) {
    return kPartial && v == kVecs - 1 ? Vec::loadu(p + v * kV, last_count) : Vec::loadu(p + v * kV);
  };
  Vec acc[kRows][kVecs];
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) acc[r][v] = accumulate ? load(c + r * ldc, v) : Vec(T(0));
  for (int64_t k = 0; k < K; ++k) {
    Vec bv[kVecs];
    for (int v = 0; v < kVecs; ++v) bv[v] = load(b + k * ldb, v);
    const T* ak = a + k * a_layout.k_stride;
    for (int r = 0; r < kRows; ++r) {
      const Vec av(ak[r * a_layout.row_stride]);
      for (int v = 0; v < kVecs; ++v) acc[r][v] = at::vec::fmadd(av, bv[v], acc[r][v]);
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int v = 0; v < kVecs; ++v) {
      if (kPartial && v == kVecs - 1)
        acc[r][v].store(c + r * ldc + v * kV, last_count);
      else
        acc[r][v].store(c + r * ldc + v * kV);
    }
}

template <typename T, int kRows>
inline void gemm_rows(int64_t cols, int64_t K, const T* a, GemmA a_layout, const T* b, int64_t ldb, T* c, int64_t ldc,
                      bool accumulate) {
  constexpr int64_t kV = at::vec::Vectorized<T>::size();
  if (cols == 2 * kV)
    gemm_block<T, kRows, 2, false>(K, a, a_layout, b, ldb, c, ldc, accumulate, kV);
  else if (cols > kV)
    gemm_block<T, kRows, 2, true>(K, a, a_layout, b, ldb, c, ldc, accumulate, cols - kV);
  else if (cols == kV)
    gemm_block<T, kRows, 1, false>(K, a, a_layout, b, ldb, c, ldc, accumulate, kV);
  else
    gemm_block<T, kRows, 1, true>(K, a, a_layout, b, ldb, c, ldc, accumulate, cols);
}

}  // namespace detail

// C[M, N] = A[M, K] B[K, N], or C += A B with accumulate. Rows are split into blocks of nearly equal size (32 rows
// = 6 6 5 5 5 5, not 6 x 5 + 2): a block of 1 or 2 rows issues as many loads as FMAs and runs at about half speed.
template <typename T>
void tile_gemm(int64_t M, int64_t N, int64_t K, const T* a, GemmA a_layout, const T* b, int64_t ldb, T* c,
               int64_t ldc, bool accumulate) {
  constexpr int64_t kMaxRows = 6;
  constexpr int64_t kBlockCols = 2 * at::vec::Vectorized<T>::size();
  const int64_t row_blocks = (M + kMaxRows - 1) / kMaxRows;
  for (int64_t n0 = 0; n0 < N; n0 += kBlockCols) {
    const int64_t cols = std::min(kBlockCols, N - n0);
    for (int64_t block = 0, m0 = 0; block < row_blocks; ++block) {
      const int64_t rows = M / row_blocks + (block < M % row_blocks ? 1 : 0);
      const T* a_block = a + m0 * a_layout.row_stride;
      T* c_block = c + m0 * ldc + n0;
      const T* b_block = b + n0;
      switch (rows) {
        case 6: detail::gemm_rows<T, 6>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
        case 5: detail::gemm_rows<T, 5>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
        case 4: detail::gemm_rows<T, 4>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
        case 3: detail::gemm_rows<T, 3>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
        case 2: detail::gemm_rows<T, 2>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
        default: detail::gemm_rows<T, 1>(cols, K, a_block, a_layout, b_block, ldb, c_block, ldc, accumulate); break;
      }
      m0 += rows;
    }
  }
}

}  // namespace fastformer::cpu
