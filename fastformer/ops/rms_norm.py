"""ff.ops.rms_norm: RMSNorm (T5, Llama) over the last dimension, optionally fused with the residual add."""
import torch

from fastformer._backends import accumulation_dtype
from fastformer.ops import _norm


def rms_norm_ref(x, weight=None, eps=1e-6, residual=None, bias=None):
    """The documented semantics, in plain PyTorch: statistics in fp32 whatever the input dtype."""
    if bias is not None:
        raise ValueError("rms_norm has no bias")
    s = x + residual if residual is not None else x
    acc = accumulation_dtype(s.dtype)
    s_acc = s.to(acc)
    out = s_acc * torch.rsqrt(s_acc.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        out = out * weight.to(acc)
    out = out.to(s.dtype)
    return (out, s) if residual is not None else out


def rms_norm(x, weight=None, eps=1e-6, residual=None, backend=None):
    """RMSNorm of x over its last dimension N: x / sqrt(mean(x^2) + eps) * weight.

    x [..., N] (fp32, fp16, bf16, fp64; any strides); weight [N] or None. With residual: returns
    (RMSNorm(x + residual), x + residual) from one pass. Statistics in fp32 (fp64 for fp64 inputs).
    """
    return _norm.norm("rms_norm", rms_norm_ref, x, residual, weight, None, eps, backend)
