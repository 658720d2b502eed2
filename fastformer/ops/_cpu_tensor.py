"""The argument check shared by the CPU-only ops (gemv, panel_linear): a tensor of an accepted dtype on the CPU."""
import torch


def check_cpu_tensor(name: str, t, dtypes, expected: str) -> None:
    """TypeError unless t is a torch.Tensor of one of `dtypes` (described as `expected`); ValueError off the CPU."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must be {expected}, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
