// Torch-free definitions shared by every CUDA kernel file and its launcher.
//
// Kernels take raw pointers, explicit strides and a cudaStream_t; launchers are plain C++ functions
// declared in torch-free headers, so each .cu compiles with nvcc alone (CI compile-checks them for
// sm_80 and sm_90 on a machine without a GPU). Bindings in csrc/cuda/*.cpp translate torch tensors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastformer::cuda {

// Element type of the tensors a launcher receives (the accumulation type is always float).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Returns the launch error (cudaSuccess if none) so bindings can raise it as a Python error.
inline cudaError_t last_launch_error() { return cudaGetLastError(); }

}  // namespace fastformer::cuda
