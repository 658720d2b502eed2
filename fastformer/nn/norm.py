"""Drop-in LayerNorm and RMSNorm: torch.nn subclasses (same constructor, parameters and state_dict
keys) whose forward runs fastformer's fused kernels. A `residual=` keyword gives the fused add & norm."""
import math

import torch
from torch import nn

from fastformer import ops
from fastformer.nn._dropin import _DropIn


def _normalize(module, op, x: torch.Tensor, residual, params, eps):
    """op(x, *params, eps, residual=residual) over the trailing module.normalized_shape dims of x.

    The ops normalize one last dim, so a multi-dim normalized_shape is viewed as one dim of their
    product and the result viewed back. A 1-dim one (every transformer) goes to the op as is: the
    views cost ~10 us of Python per call, which adds up in decoding (two norms per layer per token).
    """
    shape = tuple(module.normalized_shape)
    if len(shape) == 1 and x.dim() >= 1 and x.shape[-1] == shape[0]:
        return op(x, *params, eps, residual=residual, backend=module.backend)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        raise ValueError(f"input must end with normalized_shape {shape}, got shape {tuple(x.shape)}")
    width = math.prod(shape)
    lead = x.shape[: x.dim() - len(shape)]
    flat = (lambda t: t.reshape(*lead, width) if t is not None else None)  # [..., N]
    result = op(flat(x), *(p.reshape(width) if p is not None else None for p in params), eps,
                residual=flat(residual), backend=module.backend)
    if isinstance(result, tuple):
        return tuple(t.view(x.shape) for t in result)
    return result.view(x.shape)


class LayerNorm(_DropIn, nn.LayerNorm):
    """torch.nn.LayerNorm on fastformer's kernels. `backend` as in ff.ops (None = auto).

    forward(x) -> LayerNorm(x); forward(x, residual=r) -> (LayerNorm(x + r), x + r) in one pass.
    """

    def forward(self, x, residual=None):
        return _normalize(self, ops.layer_norm, x, residual, (self.weight, self.bias), self.eps)


class RMSNorm(_DropIn, nn.RMSNorm):
    """torch.nn.RMSNorm on fastformer's kernels; eps=None means torch.finfo(x.dtype).eps, as in torch.

    forward(x) -> RMSNorm(x); forward(x, residual=r) -> (RMSNorm(x + r), x + r) in one pass.
    """

    def forward(self, x, residual=None):
        eps = self.eps if self.eps is not None else torch.finfo(x.dtype).eps
        return _normalize(self, ops.rms_norm, x, residual, (self.weight,), eps)
