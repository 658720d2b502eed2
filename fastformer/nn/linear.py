"""Linear: torch.nn.Linear that runs CPU fp32 inference on oneDNN's prepacked matmul.

Measured on the 2-core development machine (DESIGN.md): F.linear [128x768]x[768x3072] ~160 GFLOP/s,
the oneDNN (mkldnn) prepacked linear from the same torch install ~400 GFLOP/s (on a 2-core AVX-512
VM, 2 threads: 88 vs 153 GFLOP/s). The packed weight is a cache beside the parameter (not in the
state_dict), rebuilt when the weight changes; whenever a gradient is needed, or off CPU fp32 (or bf16 on a
CPU with native bf16 dot products: 1.5 ms vs fp32's 2.9 ms for the product above, single rows 0.056 vs 0.122 ms
for F.linear on bf16), forward is plain F.linear.

Single fp32 or bf16 rows (KV-cache decoding at batch 1) run fastformer's own matrix-vector kernel
(ff.ops.gemv) on the unpacked weight instead. A matrix-vector product streams the weight once, so its
speed is memory bandwidth; measured on a quiet 2-core AVX-512 development VM (torch 2.13.0, 2 threads,
GPT-2-small's 48 layer matrices + LM head, 498 MB): F.linear reads 13.5 GB/s, the packed oneDNN product
20-28 GB/s, ff.ops.gemv 1.00-1.19x faster than oneDNN in the same runs (csrc/cpu/gemv.cpp).

A few fp32 rows (2 to 64: an encoder on one or a few short sentences) run ff.ops' panel_linear on the weight packed
in column panels: there a product is as much arithmetic as weight streaming, which that kernel overlaps, and it has
none of oneDNN's ~15-20 us of fixed work per call (all-MiniLM-L6-v2's 24 products at 18 rows: 2.56 vs 3.43 ms,
bench/panel_linear_cpu.py). Above 64 rows the lead shrinks (128: 2%) and oneDNN keeps them.

On a machine whose cores are busy with other processes any OpenMP region waits for descheduled
threads (seen: 12-16 ms per call); there, run with torch.set_num_threads(1).
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastformer.nn import cpu_features
from fastformer.nn._dropin import _DropIn
from fastformer.nn.activation import ACTIVATIONS, ONEDNN_POST_OPS
from fastformer.ops.gemv import AVAILABLE as _HAS_GEMV, DTYPES as GEMV_DTYPES, gemv_checked
from fastformer.ops.panel_linear import (ACTIVATIONS as PANEL_ACTIVATIONS, AVAILABLE as _HAS_PANELS, PANEL,
                                         PANEL_MAX_ROWS, pack_panels_checked, panel_linear_checked)

_HAS_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
_CACHES = ("_packed", "_packed_key", "_panels", "_panels_key")  # the packed weights: not state, not copied


def _packs(dtype: torch.dtype) -> bool:
    """fp32 always; bf16 where the CPU has native bf16 dot products (elsewhere oneDNN emulates them, ~8x slower)."""
    return dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_features.missing_for("bf16") is None)


def single_rows_on_gemv(dtype: torch.dtype) -> bool:
    """Whether Linear runs a single inference row of `dtype` on the CPU through ff.ops.gemv (the decode-step
    product): fp32, and bf16 where it runs bf16 on oneDNN at all (native bf16 dot products)."""
    return _HAS_GEMV and dtype in GEMV_DTYPES and _packs(dtype)


class Linear(_DropIn, nn.Linear):
    # self.weight and self.bias are read once per call: a parameter lookup through nn.Module.__getattr__ costs
    # ~0.7 us, and a forward makes 24 of these calls (all-MiniLM-L6-v2), a GPT-2-small decode step 49.
    def forward(self, x, activation=None):
        """activation (a name in fastformer.nn.activation.ACTIVATIONS): returns activation(linear(x)), fused
        into the matmul as a oneDNN post-op on the packed path."""
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or None, got {activation!r}")
        weight, bias = self.weight, self.bias
        if self._use_packed(x, weight):
            if x.dim() == 0 or x.shape[-1] != self.in_features:  # oneDNN's own message names neither
                raise ValueError(f"input must have shape [..., in_features={self.in_features}], got "
                                 f"{tuple(x.shape)}")
            rows = x.numel() // self.in_features
            if rows == 1 and single_rows_on_gemv(x.dtype):
                # One row: memory-bound, our kernel streams W faster. x was checked above (fp32 or bf16, CPU,
                # [..., K]) and the weight is x's dtype; a bias of another dtype is refused by the kernel.
                y = gemv_checked(x, weight, bias)
                return ACTIVATIONS[activation](y) if activation is not None else y
            if self._rows_on_panels(x.dtype, rows):
                fused = activation if activation in PANEL_ACTIVATIONS else "none"
                y = panel_linear_checked(x, self._panel_weight(weight), bias, fused)
                return y if activation is None or activation == fused else ACTIVATIONS[activation](y)
            post_op, algorithm = ONEDNN_POST_OPS.get(activation, ("none", ""))
            y = torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(weight), bias, post_op, [], algorithm)
            return y if activation is None or activation in ONEDNN_POST_OPS else ACTIVATIONS[activation](y)
        y = F.linear(x, weight, bias)
        return ACTIVATIONS[activation](y) if activation is not None else y

    def _use_packed(self, x, weight) -> bool:
        needs_grad = torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)
        return (_HAS_MKLDNN and self.backend in (None, "cpu") and not needs_grad and x.is_cpu
                and x.dtype == weight.dtype and _packs(x.dtype) and not torch.compiler.is_compiling())

    def _rows_on_panels(self, dtype: torch.dtype, rows: int) -> bool:
        """Whether `rows` inference rows of `dtype` (on the packed path, more than one) run ff.ops' panel_linear:
        fp32, at most PANEL_MAX_ROWS rows, out_features a multiple of the panel width."""
        return _HAS_PANELS and dtype == torch.float32 and rows <= PANEL_MAX_ROWS and self.out_features % PANEL == 0

    def _block_weight(self, dtype: torch.dtype, rows: int) -> torch.Tensor:
        """The weight a fused block op passes for this linear on `rows` rows of `dtype` (the packed path, more than
        one row): its panels where forward would run panel_linear, else oneDNN's packed weight, so that the fused
        block computes what the module does."""
        if self._rows_on_panels(dtype, rows):
            return self._panel_weight(self.weight)
        return self._packed_weight(self.weight)

    def __getstate__(self):
        # The packed weight is a cache in oneDNN's opaque layout, whose storage neither pickle (torch.save) nor
        # copy.deepcopy can read; a copy packs its own on its first call. So are the panels.
        return {k: v for k, v in super().__getstate__().items() if k not in _CACHES}

    def _packed_weight(self, weight) -> torch.Tensor:
        return self._cached_pack("_packed", weight, torch.ops.mkldnn._reorder_linear_weight)

    def _panel_weight(self, weight) -> torch.Tensor:
        return self._cached_pack("_panels", weight, pack_panels_checked)

    def _cached_pack(self, name: str, weight, pack) -> torch.Tensor:
        """pack(weight), kept as self.<name> while the weight is unchanged. Both packs (oneDNN's for many rows,
        panels for a few) exist once the module has run both: one more copy of the weight each."""
        # Inference tensors (a model built under torch.inference_mode) have no version counter: their key is
        # the storage alone, so an in-place change of such a weight needs a new tensor to be seen.
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version, weight.shape)
        state = self.__dict__
        if state.get(name + "_key") != key:
            state[name] = pack(weight.detach())
            state[name + "_key"] = key
        return state[name]
