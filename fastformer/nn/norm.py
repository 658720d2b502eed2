"""Drop-in LayerNorm and RMSNorm: torch.nn subclasses (same constructor, parameters and state_dict
keys) whose forward runs fastformer's fused kernels. A `residual=` keyword gives the fused add & norm."""
import math

import torch
from torch import nn

from fastformer import ops
from fastformer.nn._dropin import _DropIn


def _flatten_normalized(module, x: torch.Tensor, residual):
    """Views x (and residual) as [..., prod(normalized_shape)] so the kernels normalize one last dim."""
    shape = tuple(module.normalized_shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"input must end with normalized_shape {shape}, got shape {tuple(x.shape)}")
    width = math.prod(shape)
    lead = x.shape[: x.dim() - len(shape)]
    x_flat = x.reshape(*lead, width)  # [..., N]
    r_flat = residual.reshape(*lead, width) if residual is not None else None
    param = (lambda p: p.reshape(width) if p is not None else None)
    return x_flat, r_flat, param


def _unflatten(result, shape):
    if isinstance(result, tuple):
        return tuple(t.view(shape) for t in result)
    return result.view(shape)


class LayerNorm(_DropIn, nn.LayerNorm):
    """torch.nn.LayerNorm on fastformer's kernels. `backend` as in ff.ops (None = auto).

    forward(x) -> LayerNorm(x); forward(x, residual=r) -> (LayerNorm(x + r), x + r) in one pass.
    """

    def forward(self, x, residual=None):
        x_flat, r_flat, param = _flatten_normalized(self, x, residual)
        result = ops.layer_norm(x_flat, param(self.weight), param(self.bias), self.eps, residual=r_flat,
                                backend=self.backend)
        return _unflatten(result, x.shape)


class RMSNorm(_DropIn, nn.RMSNorm):
    """torch.nn.RMSNorm on fastformer's kernels; eps=None means torch.finfo(x.dtype).eps, as in torch.

    forward(x) -> RMSNorm(x); forward(x, residual=r) -> (RMSNorm(x + r), x + r) in one pass.
    """

    def forward(self, x, residual=None):
        x_flat, r_flat, param = _flatten_normalized(self, x, residual)
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        result = ops.rms_norm(x_flat, param(self.weight), eps, residual=r_flat, backend=self.backend)
        return _unflatten(result, x.shape)
