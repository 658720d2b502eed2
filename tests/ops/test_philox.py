"""fastformer.ops._philox reproduces Triton's tl.rand bit for bit (the dropout contract of every backend)."""
import pytest
import torch

from fastformer import _backends
from fastformer.ops._philox import philox_uniform

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _tl_rand(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """tl.rand(seed, offsets) computed by a Triton kernel (interpreted on CPU tensors)."""
    import triton
    import triton.language as tl

    @triton.jit
    def rand_kernel(Offsets, Out, seed, n, BLOCK: tl.constexpr):
        idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(Out + idx, tl.rand(seed, tl.load(Offsets + idx, mask=idx < n, other=0)), mask=idx < n)

    out = torch.empty(offsets.shape, dtype=torch.float32, device=offsets.device)
    rand_kernel[(triton.cdiv(offsets.numel(), 256),)](offsets, out, seed, offsets.numel(), BLOCK=256)
    return out


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**31 + 5, 2**62 + 987654321])
@pytest.mark.parametrize("base", [0, 2**31 - 100, 2**33 + 7], ids=["small", "int32_edge", "beyond_int32"])
def test_philox_uniform_is_bit_exact_with_tl_rand(seed, base):
    reason = _backends.why_not("triton", DEVICE)
    if reason:
        pytest.skip(reason)
    offsets = base + torch.arange(1000, dtype=torch.int64, device=DEVICE)  # int64 offsets, as the kernels use
    expected = _tl_rand(seed, offsets)
    got = philox_uniform(seed, offsets)
    assert torch.equal(got, expected)
    assert 0.0 <= got.min() and got.max() < 1.0


def test_philox_uniform_is_uniform():
    values = philox_uniform(42, torch.arange(100_000))
    assert abs(values.mean().item() - 0.5) < 0.005
    assert abs((values < 0.25).float().mean().item() - 0.25) < 0.005


def test_philox_rejects_negative_seed():
    with pytest.raises(ValueError, match="seed must be in"):
        philox_uniform(-1, torch.arange(3))
