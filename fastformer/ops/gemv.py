"""gemv: y = x @ weight.T + bias for ONE input row, CPU fp32 or bf16: the linear layers of a batch-1 KV-cache decode
step.

A single row makes a linear layer memory-bound (each weight is read once for one multiply-add), so its speed
is the bandwidth at which the weight streams: each thread reads its band of weight rows front to back, one row at a
time (csrc/cpu/gemv.cpp). Measured on the 2-core AVX-512 development VM, 2 threads, GPT-2-small's 49 decode
matrices (498 MB fp32): 17.3-18.4 ms (27-29 GB/s), where oneDNN's prepacked product took 18-24 ms. bf16 weights
stream half the bytes; accumulation is in fp32 and the result is rounded to bf16 once, as oneDNN's bf16 product does.
ff.nn.Linear calls it for single-row inference on the CPU; everything else keeps oneDNN / F.linear.

The op is registered in C++ (schema in csrc/fastformer.cpp); here: its fake impl, autograd (so it is a
complete op under torch.compile and in training, though the model only calls it without gradients), the
functional wrapper with its input checks, and gemv_ref.
"""
import torch
import torch.nn.functional as F

from fastformer.ops import _dispatch
from fastformer.ops._cpu_tensor import check_cpu_tensor
from fastformer.ops._layout import contiguous, last_dim_contiguous

_ops = torch.ops.fastformer
# A build older than the op has no kernel: ff.nn.Linear then keeps oneDNN for single rows.
AVAILABLE = hasattr(_ops, "gemv")
AVAILABLE_INT8 = hasattr(_ops, "gemv_int8")
DTYPES = (torch.float32, torch.bfloat16)


def gemv_ref(x, weight, bias=None):
    """The semantics: F.linear on a single row."""
    return F.linear(x, weight, bias)


def _check(x, weight, bias):
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None or name != "bias":
            check_cpu_tensor(name, t, DTYPES, "float32 or bfloat16 (gemv's CPU kernels)")
            if t.dtype != x.dtype:
                raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    _check_shapes(x, weight, bias)


def _check_shapes(x, weight, bias):
    name = "weight_int8" if weight.dtype == torch.int8 else "weight"
    if weight.dim() != 2:
        raise ValueError(f"{name} must be [N, K], got shape {tuple(weight.shape)}")
    if x.dim() == 0 or x.shape[-1] != weight.shape[1] or x.numel() != weight.shape[1]:
        raise ValueError(f"x must hold one row of K={weight.shape[1]} features ([..., K] with every other dim 1), "
                         f"got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [N={weight.shape[0]}], got shape {tuple(bias.shape)}")


def gemv(x, weight, bias=None):
    """x [..., K] holding one row, weight [N, K], bias [N] or None (all fp32, or all bf16; CPU) -> [..., N]."""
    _check(x, weight, bias)
    return gemv_checked(x, weight, bias)


def gemv_checked(x, weight, bias=None):
    """gemv on arguments whose dtypes, device and shapes the caller has checked (as gemv's _check does), skipping
    those ~6 us of Python per call: ff.nn.Linear, which knows its own weight and checks x, makes 49 of these calls
    per GPT-2-small decode step."""
    weight = last_dim_contiguous(weight)  # the kernel walks rows: any row stride, contiguous within a row
    bias = contiguous(bias) if bias is not None else None
    y = _dispatch.call(_ops.gemv.default, contiguous(x.reshape(-1)), weight, bias,
                       grad_inputs=(x, weight, bias))  # [N]
    return y.view(*x.shape[:-1], weight.shape[0])


def gemv_int8_ref(x, weight_int8, weight_scale, bias=None):
    """The semantics of gemv_int8: F.linear on one row with the int8 weight dequantized (exact in fp32)."""
    return F.linear(x, weight_int8.float() * weight_scale[:, None], bias)


def gemv_int8(x, weight_int8, weight_scale, bias=None):
    """Weight-only int8 product of one row: x [..., K] fp32 holding one row, weight_int8 [N, K] int8, weight_scale [N]
    and bias [N] (or None) fp32 (ff.nn.Int8Linear's buffers), all on the CPU -> [..., N] fp32. The weights stream at a
    quarter of fp32's bytes; x stays fp32 (no activation rounding)."""
    for name, t, dtype in (("x", x, torch.float32), ("weight_int8", weight_int8, torch.int8),
                           ("weight_scale", weight_scale, torch.float32), ("bias", bias, torch.float32)):
        if t is not None or name != "bias":
            check_cpu_tensor(name, t, (dtype,), str(dtype))
            if t.requires_grad and torch.is_grad_enabled():
                raise ValueError(f"{name} requires grad: gemv_int8 is inference-only (no gradient through int8 "
                                 "weights); run under torch.no_grad() or torch.inference_mode()")
    _check_shapes(x, weight_int8, bias)
    if tuple(weight_scale.shape) != (weight_int8.shape[0],):
        raise ValueError(f"weight_scale must be [N={weight_int8.shape[0]}], got shape {tuple(weight_scale.shape)}")
    return gemv_int8_checked(x, weight_int8, weight_scale, bias)


def gemv_int8_checked(x, weight_int8, weight_scale, bias=None):
    """gemv_int8 on arguments the caller has checked (ff.nn.Int8Linear: its own buffers, x checked)."""
    y = _ops.gemv_int8.default(contiguous(x.reshape(-1)), last_dim_contiguous(weight_int8), contiguous(weight_scale),
                               contiguous(bias) if bias is not None else None)  # [N]
    return y.view(*x.shape[:-1], weight_int8.shape[0])


if AVAILABLE_INT8:
    @torch.library.register_fake(_ops.gemv_int8.default)
    def _fake_int8(x, weight_int8, weight_scale, bias):
        return x.new_empty((weight_int8.shape[0],))

if AVAILABLE:
    @torch.library.register_fake(_ops.gemv.default)
    def _fake(x, weight, bias):
        return x.new_empty((weight.shape[0],))

    def _setup_context(ctx, inputs, output):
        x, weight, bias = inputs
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None

    def _backward(ctx, grad_y):  # grad_y [N]
        x, weight = ctx.saved_tensors
        grad_x = grad_y @ weight if ctx.needs_input_grad[0] else None  # [K]
        grad_weight = torch.outer(grad_y, x) if ctx.needs_input_grad[1] else None  # [N, K]
        grad_bias = grad_y if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias

    torch.library.register_autograd(_ops.gemv.default, _backward, setup_context=_setup_context)
