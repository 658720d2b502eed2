// fastformer._C: build facts for Python (pybind11) and the schema of every op (TORCH_LIBRARY).
//
// Each op's kernels register for the CPU key in csrc/cpu/ and for the CUDA key in csrc/cuda/;
// Python adds fake (meta) impls and autograd in fastformer/ops/. The Triton kernels register
// ops with the same schemas under the suffix "_triton" (fastformer/ops/*.py).
//
// Tensor ranks the kernels see (the functional wrappers reshape to these):
//   norms:   x, residual [rows, N], last dim contiguous, any row stride; weight, bias [N].
//   softmax: x [A, B, M, N] (last dim contiguous), mask expanded to [A, B, M, N] (stride 0 where
//            broadcast), bool or additive (x.dtype or float32); causal keeps key j for row i iff
//            j <= i + N - M (bottom-right aligned).
// Optional outputs that do not apply (residual_out without residual, grad_weight without weight)
// come back as empty tensors, so every schema has a fixed number of results.
#include <pybind11/pybind11.h>
#include <torch/library.h>

#ifndef FASTFORMER_WITH_CUDA
#define FASTFORMER_WITH_CUDA 0
#endif
#ifdef CPU_CAPABILITY_AVX2
#define FASTFORMER_CPU_ISA "avx2"
#else
#define FASTFORMER_CPU_ISA "default"
#endif

TORCH_LIBRARY(fastformer, m) {
  m.def("layer_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def("layer_norm_bwd(Tensor grad_out, Tensor? grad_residual_out, Tensor normed_input, Tensor? weight,"
        " Tensor mean, Tensor rstd, bool has_bias) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def("rms_norm_fwd(Tensor x, Tensor? residual, Tensor? weight, float eps)"
        " -> (Tensor out, Tensor residual_out, Tensor rstd)");
  m.def("rms_norm_bwd(Tensor grad_out, Tensor? grad_residual_out, Tensor normed_input, Tensor? weight,"
        " Tensor rstd) -> (Tensor grad_x, Tensor grad_weight)");
  m.def("softmax_fwd(Tensor x, Tensor? mask, float scale, bool causal) -> Tensor");
  m.def("softmax_bwd(Tensor grad_out, Tensor out, float scale) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastformer native extension: build facts; the ops live in torch.ops.fastformer";
  m.attr("cuda_built") = bool(FASTFORMER_WITH_CUDA);
  m.attr("cpu_isa") = FASTFORMER_CPU_ISA;
}
