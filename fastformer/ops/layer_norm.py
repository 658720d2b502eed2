"""ff.ops.layer_norm: LayerNorm over the last dimension, optionally fused with the residual add."""
import torch.nn.functional as F

from fastformer.ops import _norm


def layer_norm_ref(x, weight=None, bias=None, eps=1e-5, residual=None):
    """The documented semantics, in plain PyTorch."""
    s = x + residual if residual is not None else x
    out = F.layer_norm(s, (s.shape[-1],), weight, bias, eps)
    return (out, s) if residual is not None else out


def layer_norm(x, weight=None, bias=None, eps=1e-5, residual=None, backend=None):
    """LayerNorm of x over its last dimension N.

    x [..., N] (fp32, fp16, bf16, fp64; any strides); weight, bias [N] or None.
    With residual (shape of x): computes s = x + residual and LayerNorm(s) in one pass and returns
    (LayerNorm(s), s), the "add & norm" of a transformer block; otherwise returns LayerNorm(x).
    Statistics are computed in fp32 (fp64 for fp64 inputs). backend: see fastformer._backends.
    """
    return _norm.norm("layer_norm", layer_norm_ref, x, residual, weight, bias, eps, backend)
