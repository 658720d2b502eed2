"""Launch parameters shared by the row-wise Triton kernels (norms, softmax): one program per row,
the row held in registers when it fits, else looped over fixed-width tiles."""
import torch
import triton
import triton.language as tl


def acc_dtype(dtype: torch.dtype):
    """Accumulation dtype: fp32, or fp64 for fp64 inputs (gradcheck)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def tiling(n_cols: int, max_single_tile: int, tile: int) -> tuple[int, int]:
    """(BLOCK_N, NUM_TILES) for a row of n_cols columns: one power-of-2 block up to max_single_tile."""
    if n_cols <= max_single_tile:
        return triton.next_power_of_2(n_cols), 1
    return tile, triton.cdiv(n_cols, tile)


def num_warps(block_n: int) -> int:
    """One warp per 256 columns of the block (8 fp32 values per thread), 1 to 16 warps."""
    return min(max(block_n // 256, 1), 16)
