"""What the fused block ops (decode_block, encoder_block) share: the activations they run after the up product
(by name, with their semantics; the C++ side is csrc/cpu/block_ops.h's activation_named), and the argument checks:
CPU tensors of the expected dtypes, none needing a gradient (the ops are inference-only)."""
import torch
import torch.nn.functional as F

ACTIVATIONS = {"gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "relu": F.relu, "silu": F.silu}

_INDEX_DTYPES = {"key_padding_mask": torch.bool, "cu_seqlens": torch.int32}
FLOAT_DTYPES = (torch.float32, torch.bfloat16)  # what the blocks' CPU kernels compute in


def input_dtype(x) -> torch.dtype:
    """x's dtype, which every float argument of the op must share: float32 or bfloat16; else a TypeError."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or bfloat16, got {x.dtype}")
    return x.dtype


def check_activation(activation) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")


def check_tensors(op: str, tensors: dict, dtype: torch.dtype) -> None:
    """Each non-None entry of tensors (name -> value) is a CPU tensor of `dtype` (key_padding_mask: bool,
    cu_seqlens: int32) that needs no gradient; else a TypeError / ValueError naming it."""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU ({op} is a CPU op), got {t.device}")
        want = _INDEX_DTYPES.get(name, dtype)
        if t.dtype != want:
            raise TypeError(f"{name} must be {want}, got {t.dtype}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad: {op} is inference-only (run under torch.inference_mode or "
                             "torch.no_grad)")


def check_shapes(hidden: int, width: int, linears: dict, norms: dict) -> None:
    """The block's parameters fit x's `hidden` and the attention's `width` (H * D): linears maps qkv, out, up, down to
    (name of its weight, weight, [(name, bias or per-channel scale or None)]), a weight [out, in] (plain or
    oneDNN-packed); norms maps names to [hidden] tensors or None. Else a ValueError naming the argument."""
    intermediate = linears["up"][1].shape[0] if linears["up"][1].dim() == 2 else None
    want = {"qkv": (3 * width, hidden), "out": (hidden, width), "up": (intermediate, hidden),
            "down": (hidden, intermediate)}
    for key, (name, weight, per_row) in linears.items():
        if weight.dim() != 2 or tuple(weight.shape) != want[key]:
            raise ValueError(f"{name} must be [{want[key][0]}, {want[key][1]}] for hidden={hidden}, H*D={width}, got "
                             f"{tuple(weight.shape)}")
        for row_name, t in per_row:
            if t is not None and tuple(t.shape) != (want[key][0],):
                raise ValueError(f"{row_name} must be [{want[key][0]}], got {tuple(t.shape)}")
    for name, t in norms.items():
        if t is not None and tuple(t.shape) != (hidden,):
            raise ValueError(f"{name} must be [hidden={hidden}], got {tuple(t.shape)}")
