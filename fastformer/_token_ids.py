"""Token ids: integer tensors whose values index a vocabulary, checked where they meet an embedding table so
that a bad id is an error naming the argument, not torch's bare "index out of range in self" (on a GPU, a
device-side assert that poisons the CUDA context).

The range is checked on CPU tensors at every call (one aminmax over the ids: a few microseconds for
[8, 128]). On GPU tensors a forward checks the dtype only: reading the range back would stall the host
on every call, every decode step included. generate() checks its prompt's range once per call on every
device (fastformer/generation.py), so the ids a GPU forward sees unchecked are the ones passed to it
directly.
"""
import torch
from torch import Tensor

ID_DTYPES = (torch.long, torch.int)


def check_dtype(ids, name: str) -> None:
    """TypeError unless `ids` is an int64 or int32 tensor (float ids would be truncated or rejected deep inside
    torch)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be an int64 or int32 torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype not in ID_DTYPES:
        raise TypeError(f"{name} must be an int64 or int32 tensor of token ids, got {ids.dtype}")


def check_token_ids(ids, vocab_size: int, name: str = "input_ids", *, on_any_device: bool = False,
                    size_name: str = "the model's vocabulary size") -> None:
    """check_dtype, then ValueError unless every id lies in [0, vocab_size): on CPU tensors always, on other
    devices only with on_any_device (it synchronizes with the device). Not checked while torch.compile traces
    (a data-dependent branch would break the graph)."""
    check_dtype(ids, name)
    if ids.numel() == 0 or torch.compiler.is_compiling() or (ids.device.type != "cpu" and not on_any_device):
        return
    low, high = (int(v) for v in torch.aminmax(ids))
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"{name} must lie in [0, {vocab_size}) ({size_name}), got token id {bad}")
