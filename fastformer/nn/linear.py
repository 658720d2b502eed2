"""Linear: torch.nn.Linear that runs CPU fp32 inference on oneDNN's prepacked matmul.

Measured on the 2-core development machine (DESIGN.md): F.linear [128x768]x[768x3072] ~160 GFLOP/s,
the oneDNN (mkldnn) prepacked linear from the same torch install ~400 GFLOP/s. The packed weight is
a cache beside the parameter (not in the state_dict), rebuilt when the weight changes; whenever a
gradient is needed, off CPU fp32, or for a single row, forward is plain F.linear.

A single row (KV-cache decoding) is a matrix-vector product that streams the weight once, as fast
through F.linear as through oneDNN (1 thread, [1x768]x[768x2304]: 0.22 vs 0.25 ms), and oneDNN's
OpenMP region then only costs: measured on the 2-core machine under load, 12-16 ms per call with
2 threads, against 0.2-0.3 ms for F.linear.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastformer.nn._dropin import _DropIn

_HAS_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class Linear(_DropIn, nn.Linear):
    def forward(self, x):
        if self._use_packed(x):
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _use_packed(self, x) -> bool:
        needs_grad = torch.is_grad_enabled() and (self.weight.requires_grad or x.requires_grad)
        return (_HAS_MKLDNN and self.backend in (None, "cpu") and not needs_grad and x.device.type == "cpu"
                and x.dtype == torch.float32 and self.weight.dtype == torch.float32
                and x.numel() > x.shape[-1]  # more than one row
                and not torch.compiler.is_compiling())

    def _packed_weight(self) -> torch.Tensor:
        key = (self.weight.data_ptr(), self.weight._version, tuple(self.weight.shape))
        if getattr(self, "_packed_key", None) != key:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach())
            self._packed_key = key
        return self._packed
