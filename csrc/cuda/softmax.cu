// Softmax over the last dimension on CUDA: forward with scale, mask and causal masking; backward.
//
// Rows are spread over row groups of threads (cuda/row_group.cuh). A row of up to 16384 columns is
// read once into registers as fp32 scores: row max, exp, row sum, normalize, store. Longer rows run
// the online softmax over chunks (a running max per thread, its sum rescaled when the max grows),
// then re-read each chunk to write it. Scores are kept in the log2 domain (scaled by log2(e)) so each
// element costs one exp2. x and out move 16 bytes per access when rows are 16-byte aligned; the mask
// is read element by element through its own strides (a broadcast mask stays in L1/L2).
#include "cuda/softmax.h"

#include <type_traits>

#include "cuda/row_group.cuh"
#include "cuda/row_io.cuh"

namespace fastformer::cuda {
namespace {

// fp32 values each thread holds per chunk. Forward: 16 (1024 threads x 16 = rows of 16384 columns in
// registers). Backward holds two arrays, and 1024-thread blocks cap a thread at 64 registers, so 8.
constexpr int kFwdElems = 16;
constexpr int kBwdElems = 8;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -__builtin_huge_valf();

struct NoMask {};

// 2^(z - max) for a kept score, 0 for a removed one (z = -inf; max is -inf only if all are).
__device__ __forceinline__ float exp2_shifted(float z, float max) { return z == kNegInf ? 0.f : exp2f(z - max); }

template <typename T, typename MaskT, int V, int kPerThread>
__global__ void __launch_bounds__(kMaxBlockThreads) softmax_fwd_kernel(SoftmaxFwdArgs a, int64_t chunks) {
  __shared__ float scratch[kMaxWarps];
  const RowGroup group = RowGroup::of_this_thread(scratch);
  const int64_t size_b = a.sizes[1], size_m = a.sizes[2], cols = a.sizes[3];
  const int64_t rows = a.sizes[0] * size_b * size_m;
  const int64_t packs = cols / V;
  const float x_scale = a.scale * kLog2e;
  const MaskT* mask = static_cast<const MaskT*>(a.mask);  // used only when MaskT is not NoMask
  const int64_t row_step = int64_t{gridDim.x} * blockDim.y;

  for (int64_t first = int64_t{blockIdx.x} * blockDim.y; first < rows; first += row_step) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < rows;
    const int64_t m = row % size_m, b = (row / size_m) % size_b, a0 = row / size_m / size_b;
    const T* x = static_cast<const T*>(a.x) + a0 * a.x_strides[0] + b * a.x_strides[1] + m * a.x_strides[2];
    const int64_t mask_row = a0 * a.mask_strides[0] + b * a.mask_strides[1] + m * a.mask_strides[2];
    const int64_t last_kept = a.causal ? m + cols - size_m : cols - 1;
    T* out = static_cast<T*>(a.out) + row * cols;

    const RowPacks<kPerThread> row_packs{group, packs, valid};
    float z[kPerThread][V];  // log2(e) * (scale * x + mask); -inf where removed and past the row
    const auto load_chunk = [&](int64_t chunk) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t p = row_packs.pack(chunk, i);
        if (!row_packs.in_row(p)) {
#pragma unroll
          for (int k = 0; k < V; ++k) z[i][k] = kNegInf;
          continue;
        }
        load_floats<T, V>(x + p * V, z[i]);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const int64_t col = p * V + k;
          float v = z[i][k] * x_scale;
          if constexpr (std::is_same_v<MaskT, bool>) {
            if (!mask[mask_row + col * a.mask_strides[3]]) v = kNegInf;
          } else if constexpr (!std::is_same_v<MaskT, NoMask>) {
            v = fmaf(to_float(mask[mask_row + col * a.mask_strides[3]]), kLog2e, v);
          }
          z[i][k] = col > last_kept ? kNegInf : v;
        }
      }
    };
    const auto store_chunk = [&](int64_t chunk, float max, float inv_sum) {
      row_packs.for_each(chunk, [&](int i, int64_t p) {
        float y[V];
#pragma unroll
        for (int k = 0; k < V; ++k) y[k] = exp2_shifted(z[i][k], max) * inv_sum;
        store_floats<T, V>(out + p * V, y);
      });
    };

    float max_z = kNegInf, sum = 0.f;  // the row's (or, while chunking, this thread's) max score and sum of 2^(z - max_z)
    if (chunks == 1) {
      load_chunk(0);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) max_z = fmaxf(max_z, z[i][k]);
      max_z = group.max(max_z);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) sum += exp2_shifted(z[i][k], max_z);
      sum = group.sum(sum);
    } else {
      for (int64_t c = 0; c < chunks; ++c) {
        load_chunk(c);
        float chunk_max = kNegInf;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int k = 0; k < V; ++k) chunk_max = fmaxf(chunk_max, z[i][k]);
        const float new_max = fmaxf(max_z, chunk_max);
        sum *= exp2_shifted(max_z, new_max);
        max_z = new_max;
#pragma unroll
        for (int i = 0; i < kPerThread; ++i)
#pragma unroll
          for (int k = 0; k < V; ++k) sum += exp2_shifted(z[i][k], max_z);
      }
      const float row_max = group.max(max_z);
      sum = group.sum(sum * exp2_shifted(max_z, row_max));
      max_z = row_max;
    }
    const float inv_sum = sum > 0.f ? 1.f / sum : 0.f;  // sum = 0: every key removed, the row is 0

    if (chunks == 1) {
      store_chunk(0, max_z, inv_sum);
    } else {
      for (int64_t c = 0; c < chunks; ++c) {
        load_chunk(c);
        store_chunk(c, max_z, inv_sum);
      }
    }
  }
}

template <typename T, int V, int kPerThread>
__global__ void __launch_bounds__(kMaxBlockThreads)
    softmax_bwd_kernel(const T* grad_out, const T* out, T* grad_x, int64_t rows, int64_t cols, float scale,
                       int64_t chunks) {
  __shared__ float scratch[kMaxWarps];
  const RowGroup group = RowGroup::of_this_thread(scratch);
  const int64_t packs = cols / V;
  const int64_t row_step = int64_t{gridDim.x} * blockDim.y;

  for (int64_t first = int64_t{blockIdx.x} * blockDim.y; first < rows; first += row_step) {
    const int64_t row = first + threadIdx.y;
    const bool valid = row < rows;
    const int64_t offset = row * cols;

    const RowPacks<kPerThread> row_packs{group, packs, valid};
    float dy[kPerThread][V], y[kPerThread][V];  // 0 past the row
    const auto load_chunk = [&](int64_t chunk) {
#pragma unroll
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t p = row_packs.pack(chunk, i);
        if (row_packs.in_row(p)) {
          load_floats<T, V>(grad_out + offset + p * V, dy[i]);
          load_floats<T, V>(out + offset + p * V, y[i]);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) dy[i][k] = y[i][k] = 0.f;
        }
      }
    };

    if (chunks == 1) load_chunk(0);
    float dot = 0.f;
    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c);
#pragma unroll
      for (int i = 0; i < kPerThread; ++i)
#pragma unroll
        for (int k = 0; k < V; ++k) dot += dy[i][k] * y[i][k];
    }
    dot = group.sum(dot);

    for (int64_t c = 0; c < chunks; ++c) {
      if (chunks > 1) load_chunk(c);
      row_packs.for_each(c, [&](int i, int64_t p) {
        float dx[V];
#pragma unroll
        for (int k = 0; k < V; ++k) dx[k] = scale * y[i][k] * (dy[i][k] - dot);
        store_floats<T, V>(grad_x + offset + p * V, dx);
      });
    }
  }
}

template <typename T, typename MaskT>
cudaError_t launch_fwd(const SoftmaxFwdArgs& a, cudaStream_t stream) {
  constexpr int V = kPack16<T>;
  const int64_t cols = a.sizes[3];
  const RowPlan plan = plan_rows(a.sizes[0] * a.sizes[1] * a.sizes[2], cols, kFwdElems);
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(plan.blocks), plan.block(), 0, stream>>>(a, plan.chunks);
  };
  if (packs_fit(V, sizeof(T), {a.x, a.out}, {cols, a.x_strides[0], a.x_strides[1], a.x_strides[2]})) {
    launch(softmax_fwd_kernel<T, MaskT, V, kFwdElems / V>);
  } else {
    launch(softmax_fwd_kernel<T, MaskT, 1, kFwdElems>);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bwd(const T* grad_out, const T* out, T* grad_x, int64_t rows, int64_t cols, float scale,
                       cudaStream_t stream) {
  constexpr int V = kPack16<T>;
  const RowPlan plan = plan_rows(rows, cols, kBwdElems);
  const auto launch = [&](auto kernel) {
    kernel<<<static_cast<unsigned>(plan.blocks), plan.block(), 0, stream>>>(grad_out, out, grad_x, rows, cols, scale,
                                                                            plan.chunks);
  };
  if (packs_fit(V, sizeof(T), {grad_out, out, grad_x}, {cols})) {
    launch(softmax_bwd_kernel<T, V, kBwdElems / V>);
  } else {
    launch(softmax_bwd_kernel<T, 1, kBwdElems>);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t softmax_fwd(const SoftmaxFwdArgs& args, DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    switch (args.mask_kind) {
      case MaskKind::kNone: return launch_fwd<T, NoMask>(args, stream);
      case MaskKind::kBool: return launch_fwd<T, bool>(args, stream);
      case MaskKind::kSameAsX: return launch_fwd<T, T>(args, stream);
      case MaskKind::kFloat32: return launch_fwd<T, float>(args, stream);
    }
    return cudaErrorInvalidValue;
  });
}

cudaError_t softmax_bwd(const void* grad_out, const void* out, void* grad_x, int64_t rows, int64_t cols, float scale,
                        DType dtype, cudaStream_t stream) {
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return launch_bwd<T>(static_cast<const T*>(grad_out), static_cast<const T*>(out), static_cast<T*>(grad_x), rows,
                         cols, scale, stream);
  });
}

}  // namespace fastformer::cuda
