"""panel_linear: act(x @ weight.T + bias) for a few fp32 rows on the CPU (2 to 64: an encoder forward on one or a
few short sentences), from the weight packed once into column panels by pack_panels.

At a few rows a product costs about as much arithmetic as streaming its weights, and oneDNN's prepacked product
adds ~15-20 us of fixed work per call; the kernel (csrc/cpu/panel_linear.cpp) streams each panel front to back with
a software prefetch of the next panel and keeps tiles of 6 rows in registers. Measured on the 2-core AVX-512
development VM, 2 threads, all-MiniLM-L6-v2's 24 products (42.5 MB, cold) in turn (bench/panel_linear_cpu.py):
2.56 ms against oneDNN's 3.43 at 18 rows, 2.13 / 2.78 at 8, 6.75 / 7.56 at 64; 13.68 / 13.96 at 128.
ff.nn.Linear runs it for 2 to PANEL_MAX_ROWS rows (one row: ff.ops.gemv) and keeps oneDNN above; a module that has
run both keeps both packs (one more copy of its weight).

Inference only (no autograd: the panels are a cache of the weight, not a parameter). Here: the fake impls, the
functional wrappers with their input checks, and panel_linear_ref.
"""
import torch
import torch.nn.functional as F

from fastformer.ops import _block_args
from fastformer.ops._cpu_tensor import check_cpu_tensor

_ops = torch.ops.fastformer
# The kernel exists in AVX2 builds (csrc/cpu/panel_linear.cpp); elsewhere, or in a build older than the op,
# ff.nn.Linear keeps oneDNN.
AVAILABLE = hasattr(_ops, "panel_linear") and torch._C._dispatch_has_kernel_for_dispatch_key("fastformer::panel_linear",
                                                                                             "CPU")
PANEL = 16  # output columns per panel
PANEL_MAX_ROWS = 64  # up to here the kernel led oneDNN by >= 10% (bench/panel_linear_cpu.py); above, by less
ACTIVATIONS = {"none": lambda t: t, **_block_args.ACTIVATIONS}


def panel_linear_ref(x, weight, bias=None, activation="none"):
    """The semantics: the activation (none, gelu, gelu_tanh, relu, silu) of F.linear."""
    return ACTIVATIONS[activation](F.linear(x, weight, bias))


def _check_cpu_float(name, t):
    check_cpu_tensor(name, t, (torch.float32,), "torch.float32 (panel_linear's CPU kernel)")
    if t.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad: panel_linear is inference-only; run under torch.no_grad() or "
                         "torch.inference_mode()")


def pack_panels(weight):
    """weight [N, K] fp32 (N a multiple of 16) -> the panels panel_linear takes, [N / 16, K, 16]: output columns
    16p..16p+15 in panel p, one 64-byte line per k."""
    _check_cpu_float("weight", weight)
    if weight.dim() != 2 or weight.shape[0] % PANEL:
        raise ValueError(f"weight must be [N, K] with N a multiple of {PANEL}, got shape {tuple(weight.shape)}")
    return pack_panels_checked(weight.detach())


def pack_panels_checked(weight):
    """pack_panels on a weight the caller has checked (ff.nn.Linear: its own, detached)."""
    return _ops.pack_panels.default(weight)


def panel_linear(x, panels, bias=None, activation="none"):
    """x [..., K] fp32, panels from pack_panels (weight [N, K]), bias [N] or None -> act(x @ weight.T + bias)
    [..., N], on the CPU; activation one of none, gelu, gelu_tanh, relu, silu."""
    for name, t in (("x", x), ("panels", panels), ("bias", bias)):
        if t is not None or name != "bias":
            _check_cpu_float(name, t)
    if panels.dim() != 3 or panels.shape[2] != PANEL:
        raise ValueError(f"panels must be [N / {PANEL}, K, {PANEL}] (pack_panels), got shape {tuple(panels.shape)}")
    if x.dim() == 0 or x.shape[-1] != panels.shape[1]:
        raise ValueError(f"x must be [..., K={panels.shape[1]}], got shape {tuple(x.shape)}")
    if bias is not None and tuple(bias.shape) != (panels.shape[0] * PANEL,):
        raise ValueError(f"bias must be [N={panels.shape[0] * PANEL}], got shape {tuple(bias.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    return panel_linear_checked(x, panels.contiguous(), bias, activation)


def panel_linear_checked(x, panels, bias, activation):
    """panel_linear on arguments the caller has checked (ff.nn.Linear: its own weight's panels, x checked)."""
    return _ops.panel_linear.default(x.contiguous(), panels, bias.contiguous() if bias is not None else None,
                                     activation)


if AVAILABLE:
    @torch.library.register_fake(_ops.pack_panels.default)
    def _fake_pack(weight):
        return weight.new_empty((weight.shape[0] // PANEL, weight.shape[1], PANEL))

    @torch.library.register_fake(_ops.panel_linear.default)
    def _fake(x, panels, bias, activation):
        return x.new_empty((*x.shape[:-1], panels.shape[0] * PANEL))
