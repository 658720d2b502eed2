"""Int8Linear: a linear layer with int8 weights (per output channel, symmetric) and int8 activations quantized
per token at run time, for CPU inference.

y = (round(x / sx) @ round(W / sw).T) * sx * sw + b, with sx = max|x row| / 127 per token (row) and
sw = max|W row| / 127 per output channel; the int8 x int8 -> int32 product is torch._int_mm (oneDNN, VNNI),
the quantization of x and the scaling of the product fastformer.ops.int8_rows (one C++ pass each: written as
ATen ops they took ~65% of an int8 BERT-base forward).

Choices, measured on the 2-core AVX-512 VNNI development VM (torch 2.13.0, 2 threads):
  - per token, not per tensor: all-MiniLM-L6-v2 on the benchmark sentences (x4, padded), minimum
    sentence-embedding cosine vs fp32: per token 0.9971; per tensor (torch.ops.quantized.linear_dynamic,
    fbgemm, u8 asymmetric) 0.9912, with reduce_range 0.9666;
  - GEMM, [128x768]x[768x3072]: fp32 oneDNN prepacked 2.9 ms, bf16 1.5 ms, torch._int_mm 0.84 ms, fbgemm dynamic
    (its per-tensor quantization included) 0.80 ms, onednn.qlinear_pointwise 0.83 ms;
  - single rows (decode; GPT-2-small's 48 layer matrices streamed from memory, 85 MB as int8): fp32 18.0 ms,
    bf16 9.3 ms, the per-token path above 5.0 ms, fbgemm dynamic 4.7 ms, weight-only torch._weight_int8pack_mm
    (bf16 activations) 6.7 ms (with fp32 activations it is 20-50x slower). A single row now takes
    ff.ops.gemv_int8 instead: weight-only (x stays fp32, no activation rounding), each thread streaming its band of
    int8 rows front to back; GPT-2-small greedy decode, in-process A/B, 7 interleaved rounds, 2 threads: 9.20
    ms/token vs 11.55 through the per-token path (fp32 13.73 in the same run);
  - a second int8 pass for rows above MAX_CREST, against the alternatives (all-MiniLM-L6-v2, 33 benchmark
    sentences, min embedding cosine vs fp32; time of 32 sentences, 1 thread, interleaved, load 2.4 so only
    relative): one pass 0.9869; per-class ablation, that class in fp32: qkv 0.9950 (+37% time), FFN up 0.9908
    (+45%), FFN down 0.9889, attention out 0.9880, only V's rows of qkv 0.9952 (the error is the V projection
    of LayerNorm outputs); SmoothQuant smoothing (alpha 0.5-0.7) on qkv + up, calibrated on the test sentences
    themselves 0.9958-0.9961, from LayerNorm weights (data-free) 0.9891-0.9901; two passes on every row
    0.9986 (~2x the GEMMs), on rows above crest 16 only 0.9975 (5% of rows; in another run at load 3.9 93.6 ms
    against 96.7 ms for one pass: no measurable cost).
"""
import torch
from torch import nn

from fastformer._module_epoch import ChangeTracked
from fastformer.ops._layout import last_dim_contiguous
from fastformer.ops.gemv import AVAILABLE_INT8 as _HAS_GEMV_INT8, gemv_int8_checked
from fastformer.ops.int8_rows import dequantize_rows_int32, quantize_rows_int8, quantize_rows_int8_ref

# A token row whose max|x| / rms(x) exceeds this gets a second int8 pass over its rounding residual: one int8
# step is then more than 16 / (127 * sqrt(12)) = 3.6% of the row's rms. all-MiniLM-L6-v2, 33 benchmark sentences,
# min sentence-embedding cosine vs fp32 (fake-quantized): one pass 0.9869; refine above 12: 0.9970 (14% of rows);
# 16: 0.9975 (4.7%); 20: 0.9894 (0.9%: K=384 rows cannot exceed sqrt(384) = 19.6).
MAX_CREST = 16.0


class Int8Linear(ChangeTracked, nn.Module):
    """Inference-only replacement for nn.Linear on CPU float32 inputs. Buffers: weight_int8 [out, in] int8,
    weight_scale [out] float32, bias [out] float32 or None."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "Int8Linear":
        """Quantizes a float weight [out, in] once (per output channel, symmetric); bias stays float32."""
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(f"weight must be a 2-D float tensor [out_features, in_features], got "
                             f"{tuple(weight.shape)} {weight.dtype}")
        out_features, in_features = weight.shape
        module = cls(in_features, out_features, bias=bias is not None)
        quantized, scale, _ = quantize_rows_int8_ref(weight.detach().to(device="cpu", dtype=torch.float32))
        module.weight_int8.copy_(quantized)
        module.weight_scale.copy_(scale)
        if bias is not None:
            module.bias.copy_(bias.detach())
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise TypeError(f"Int8Linear takes CPU float32 input, got {x.dtype} on {x.device.type}")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input must have shape [..., in_features={self.in_features}], got {tuple(x.shape)}")
        if x.requires_grad and torch.is_grad_enabled():
            raise RuntimeError("Int8Linear is inference-only (no gradient through int8 matmuls); run under "
                               "torch.no_grad() or use the float model to train")
        if x.numel() == self.in_features and _HAS_GEMV_INT8:
            # One row (a decode step): memory-bound, so weight-only: the int8 weights stream at a quarter of fp32's
            # bytes and x stays fp32 (ff.ops.gemv_int8).
            return gemv_int8_checked(x, self.weight_int8, self.weight_scale, self.bias)
        rows = last_dim_contiguous(x.reshape(-1, self.in_features))  # [M, in] (a view where x allows)
        quantized, scale, refined = quantize_rows_int8(rows, MAX_CREST)  # [M + R, in] int8, [M + R], [R]
        acc = torch._int_mm(quantized, self.weight_int8.t())  # [M + R, out] int32
        out = dequantize_rows_int32(acc, scale, self.weight_scale, self.bias, refined)  # [M, out] fp32
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                "int8 weights per channel, int8 activations per token (a single row: weight-only)")
