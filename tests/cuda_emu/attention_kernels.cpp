// csrc/cuda/attention.cu compiled as C++ for the emulator: with `-I tests/cuda_emu` ahead of `-I csrc`,
// its `#include "cuda/device_api.cuh"` resolves to the emulated hardware boundary.
#include "cuda/attention.cu"
