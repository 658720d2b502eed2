// The hardware boundary of the attention kernels: inline PTX (tensor-core mma.sync, ldmatrix, cp.async),
// the dynamic shared-memory base, and the kernel launch. Everything else in attention.cu is plain
// CUDA C++ (threadIdx, __syncthreads, __shfl_xor_sync), so tests/cuda_emu/cuda/device_api.cuh can
// replace this one header and run the same kernels on a CPU, where no GPU exists to test them.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>
#include <utility>

namespace fastformer::cuda {

// acc[16x8] += A[16x16] * B[16x8] with fp32 accumulation, T = __half or __nv_bfloat16. Fragments
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with g = lane / 4 and
// t = lane % 4, each 32-bit register holding two elements, the lower column/row in the low half:
//   a[0] = A[g][2t..2t+1], a[1] = A[g+8][2t..2t+1], a[2] = A[g][2t+8..2t+9], a[3] = A[g+8][2t+8..2t+9]
//   b0 = B[2t..2t+1][g],  b1 = B[2t+8..2t+9][g]
//   acc[0..1] = C[g][2t..2t+1], acc[2..3] = C[g+8][2t..2t+1]
template <typename T>
__device__ __forceinline__ void mma_16816(float (&acc)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __half> || std::is_same_v<T, __nv_bfloat16>, "mma_16816 takes fp16 or bf16");
  if constexpr (std::is_same_v<T, __half>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Loads four 8x8 matrices of 16-bit elements from shared memory (sm_75+). Lane l gives the address of
// row l % 8 of matrix l / 8 (16-byte aligned). Lane l receives in reg[m], low half first:
//   kTranspose = false: matrix m's row l / 4, columns 2(l % 4) and 2(l % 4) + 1;
//   kTranspose = true:  matrix m's rows 2(l % 4) and 2(l % 4) + 1 of column l / 4.
// Those are exactly the mma.m16n8k16 A fragment (four matrices = one 16x16 tile) and, for a matrix
// stored [n][k] (untransposed) or [k][n] (transposed), two B fragments.
template <bool kTranspose>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&reg)[4], const void* smem_row) {
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(smem_row));
  if constexpr (kTranspose) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(reg[0]), "=r"(reg[1]), "=r"(reg[2]), "=r"(reg[3])
                 : "r"(addr));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(reg[0]), "=r"(reg[1]), "=r"(reg[2]), "=r"(reg[3])
                 : "r"(addr));
  }
}

// Asynchronous 16-byte global -> shared copy (sm_80+). src_bytes < 16 zero-fills the rest without
// reading it (0: nothing is read, but src must still be a valid address).
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most kPendingGroups of this thread's committed groups are still in flight.
template <int kPendingGroups>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPendingGroups));
}

__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}

// kernel<<<grid_ctas, threads, smem_bytes, stream>>>(args...), raising the kernel's dynamic shared
// memory limit first when it needs more than the default 48 KB.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), int64_t grid_ctas, int threads, size_t smem_bytes,
                          cudaStream_t stream, Args&&... args) {
  if (smem_bytes > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes));
    if (err != cudaSuccess) return err;
  }
  kernel<<<static_cast<unsigned>(grid_ctas), threads, smem_bytes, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}

}  // namespace fastformer::cuda
