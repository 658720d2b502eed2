"""The tolerance rule of the test suite (DESIGN.md): an op's error against a high-precision reference
must be at most `factor` x the error of the same-dtype PyTorch implementation, plus a small atol."""
import torch

# Slack for ties in rounding: a kernel may differ from PyTorch by a few units in the last place even
# when it is as accurate, and for fp32 PyTorch's own error can be ~0.
ATOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def max_err(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return (actual.double() - reference.double()).abs().max().item() if actual.numel() else 0.0


def assert_as_accurate(actual, baseline, reference, dtype, factor=2.0, name="output"):
    """|actual - reference| <= factor * |baseline - reference| + atol, elementwise max."""
    assert actual.shape == reference.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(reference.shape)}"
    assert not torch.isnan(actual).any(), f"{name} has NaN"
    ours, theirs = max_err(actual, reference), max_err(baseline, reference)
    bound = factor * theirs + ATOL[dtype]
    assert ours <= bound, f"{name}: error {ours:.3g} > {factor} x PyTorch's {theirs:.3g} + {ATOL[dtype]:.0e}"
