"""Triton's tl.rand(seed, offset) in plain PyTorch: Philox4x32-10 to a uniform float32 in [0, 1).

Attention dropout keeps element (b, h, i, j) iff philox_uniform(seed, ((b*H + h)*Sq + i)*Sk + j) >= p
on every backend (see csrc/fastformer.cpp). This module is the reference the CPU and CUDA kernels and
the attention_ref reference reproduce; tests check it bit for bit against tl.rand under the interpreter.

Triton's tl.rand with an int64 offset block: counter (c0, c1, c2, c3) = (low 32 bits of offset,
high 32 bits of offset, 0, 0), key (k0, k1) = (low, high 32 bits of the seed as uint64), ten rounds of
  c0' = umulhi(B, c2) ^ c1 ^ k0,  c2' = umulhi(A, c0) ^ c3 ^ k1,  c1' = B * c2,  c3' = A * c0  (mod 2^32)
  k0 += KEY_A, k1 += KEY_B                                                                   (mod 2^32)
then c0 is read as an int32 x, folded to x' = x < 0 ? -x - 1 : x, and returned as float32(x') * 4.6566127342e-10
(the largest float scale keeping the result below 1). An int32 offset in [0, 2^31) gives the same values.

All arithmetic runs in int64 tensors holding uint32 values (products split in 16-bit halves so none
overflows), on the device of `offsets`.
"""
import torch

_ROUND_A = 0xD2511F53
_ROUND_B = 0xCD9E8D57
_KEY_A = 0x9E3779B9
_KEY_B = 0xBB67AE85
_ROUNDS = 10
_MASK32 = 0xFFFFFFFF
# float32(0x7FFFFFFF) * _UINT_TO_UNIFORM rounds to 0.99999994, below 1.
_UINT_TO_UNIFORM = 4.6566127342e-10


def _umulhi(constant: int, x: torch.Tensor) -> torch.Tensor:
    """High 32 bits of constant * x for uint32 values, without overflowing int64 (products < 2^48)."""
    hi16, lo16 = constant >> 16, constant & 0xFFFF
    return (hi16 * x + ((lo16 * x) >> 16)) >> 16


def _umullo(constant: int, x: torch.Tensor) -> torch.Tensor:
    """Low 32 bits of constant * x for uint32 values, without overflowing int64."""
    hi16, lo16 = constant >> 16, constant & 0xFFFF
    return ((((hi16 * x) & 0xFFFF) << 16) + lo16 * x) & _MASK32


def philox_randint(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Triton's tl.randint(seed, offsets) for int64 offsets >= 0: int64 tensor of uint32 values."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    offsets = offsets.to(torch.int64)
    c0 = offsets & _MASK32
    c1 = (offsets >> 32) & _MASK32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(_ROUNDS):
        c0, c1, c2, c3 = (
            _umulhi(_ROUND_B, c2) ^ c1 ^ k0,
            _umullo(_ROUND_B, c2),
            _umulhi(_ROUND_A, c0) ^ c3 ^ k1,
            _umullo(_ROUND_A, c0),
        )
        k0 = (k0 + _KEY_A) & _MASK32
        k1 = (k1 + _KEY_B) & _MASK32
    return c0


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Triton's tl.rand(seed, offsets) for int64 offsets >= 0: float32 tensor in [0, 1)."""
    bits = philox_randint(seed, offsets)
    as_int32 = torch.where(bits >= 2**31, bits - 2**32, bits)
    folded = torch.where(as_int32 < 0, -as_int32 - 1, as_int32)
    return folded.to(torch.float32) * torch.tensor(_UINT_TO_UNIFORM, dtype=torch.float32, device=bits.device)
