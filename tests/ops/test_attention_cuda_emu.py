"""The CUDA attention kernels (csrc/cuda/attention.cu) and the torch side of their binding
(csrc/cuda/attention_params.cpp) run on the CPU under the host emulator in tests/cuda_emu/, against the
materialized reference: input checks, indexing, masking, online softmax, the split-KV combine and the
cp.async pipeline are checked here without a GPU (tests/ops/test_attention_cuda.py runs the same cases
on a real GPU). The emulator op is built with torch.utils.cpp_extension from the unmodified sources,
tests/cuda_emu/cuda/device_api.cuh standing in for the inline-PTX header; it needs g++ and the CUDA
headers (CUDA_HOME or /usr/local/cuda), and takes ~40 s to build once per source change.
"""
import os
from pathlib import Path

import pytest
import torch

from tests.attention_kernel_cases import (BAD_INPUTS, FP32_CASES, PREFILL_CASES, SPLIT_CASES, AttentionCase,
                                         check_against_reference, check_no_keys_and_no_queries, make_inputs)

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = {"round_robin": 0, "low_first": 1, "high_first": 2}  # emu::SchedulePolicy


def _cuda_include_dir() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include/cuda_fp16.h").exists():
            return Path(home) / "include"
    return None


@pytest.fixture(scope="module")
def emulator():
    """torch.ops.fastformer_emu.attention_fwd, built (or reused) by torch.utils.cpp_extension."""
    import shutil

    from torch.utils import cpp_extension

    include = _cuda_include_dir()
    if include is None or shutil.which("g++") is None:
        pytest.skip("the CUDA host emulator needs g++ and the CUDA headers (CUDA_HOME or /usr/local/cuda)")
    emu = ROOT / "tests/cuda_emu"
    cpp_extension.load(
        name="fastformer_cuda_emu",
        sources=[str(emu / "attention_emu_op.cpp"), str(emu / "attention_kernels.cpp"), str(emu / "emu_runtime.cpp"),
                 str(ROOT / "csrc/cuda/attention_params.cpp")],
        extra_include_paths=[str(emu), str(ROOT / "csrc"), str(include)],
        # The emulator reads fp16 shared memory through 32-bit words, as the GPU code does.
        extra_cflags=["-O2", "-fno-strict-aliasing", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"],
        build_directory=_build_dir(), is_python_module=False, verbose=False)
    return torch.ops.fastformer_emu.attention_fwd


def _build_dir() -> str:
    path = ROOT / "build/cuda_emu"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def run_emulated(op, inputs, *, sm_count=132, late_copies=True, schedule="round_robin"):
    """torch.ops.fastformer.attention_fwd's (out, lse) from the CUDA kernels under the emulator, and the
    plan (split_kv, num_splits, chunk_keys) the launcher chose."""
    out, lse, plan = op(*inputs.values(), sm_count, late_copies, SCHEDULES[schedule])
    return out, lse, tuple(plan)


@pytest.mark.parametrize("case, dtype", PREFILL_CASES)
def test_prefill_kernel(emulator, case, dtype):
    inputs = make_inputs(case, dtype, "cpu")
    out, lse, (split_kv, _, _) = run_emulated(emulator, inputs)
    assert not split_kv
    check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("case, dtype", SPLIT_CASES)
def test_split_kv_kernel(emulator, case, dtype):
    inputs = make_inputs(case, dtype, "cpu")
    out, lse, (split_kv, num_splits, chunk_keys) = run_emulated(emulator, inputs)
    assert split_kv and num_splits == -(-case.seqlen_k // chunk_keys)
    check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("case", FP32_CASES, ids=AttentionCase.id)
def test_fp32_takes_split_kv_kernel(emulator, case):
    inputs = make_inputs(case, torch.float32, "cpu")
    out, lse, (split_kv, _, _) = run_emulated(emulator, inputs)
    assert split_kv
    check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("message, corrupt", BAD_INPUTS, ids=[m for m, _ in BAD_INPUTS])
def test_bad_input_raises_naming_it(emulator, message, corrupt):
    inputs = make_inputs(AttentionCase(seqlen_q=17, seqlen_k=70), torch.float16, "cpu")
    corrupt(inputs)
    with pytest.raises(RuntimeError, match=message):
        run_emulated(emulator, inputs)


def test_no_keys_and_no_queries(emulator):
    check_no_keys_and_no_queries(lambda inputs: run_emulated(emulator, inputs)[:2], "cpu")


def test_split_count_follows_sm_count(emulator):
    """Few SMs: one chunk; many: chunks of at least 128 keys (Sk = 1000 -> 7)."""
    inputs = make_inputs(AttentionCase(batch=1, heads=2, seqlen_q=1, seqlen_k=1000), torch.float16, "cpu")
    for sm_count, expected_splits in [(1, 1), (132, 7)]:
        out, lse, (_, num_splits, _) = run_emulated(emulator, inputs, sm_count=sm_count)
        assert num_splits == expected_splits
        check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("schedule", ["low_first", "high_first"])
@pytest.mark.parametrize("case", [AttentionCase(seqlen_q=130, seqlen_k=200, head_dim=64),
                                  AttentionCase(seqlen_q=40, seqlen_k=200, head_dim=256),
                                  AttentionCase(seqlen_q=3, seqlen_k=300, head_dim=64)], ids=AttentionCase.id)
def test_kernels_with_copies_at_issue_and_warps_apart(emulator, case, schedule):
    """cp.async landing at issue (the default lands them at the wait) while one warp runs ahead of the
    others: a prefetch overwriting a K/V stage another warp still reads, or a merge reading shared
    memory before every warp wrote it, changes the result."""
    inputs = make_inputs(case, torch.float16, "cpu")
    out, lse, _ = run_emulated(emulator, inputs, late_copies=False, schedule=schedule)
    check_against_reference(out, lse, inputs)


@pytest.mark.parametrize("case", [AttentionCase(seqlen_q=17, seqlen_k=40, head_dim=d, causal=True, padding=True)
                                  for d in (8, 24, 72)]
                         + [AttentionCase(seqlen_q=1, seqlen_k=40, head_dim=d, t5="causal", causal=True)
                            for d in (48, 160)], ids=AttentionCase.id)
def test_head_dims_between_tiles_run_zero_padded(emulator, case):
    """What ff.ops.attention does for the cuda backend at a head dim with no compiled tile: q, k, v
    zero-padded to the next tile (fastformer/ops/_head_dim.py), the scale of the true D, the output
    sliced back; out and lse equal the reference's on the unpadded inputs."""
    from fastformer.ops import _head_dim

    inputs = make_inputs(case, torch.float16, "cpu")
    tile = _head_dim.cuda_tile(case.head_dim)
    assert tile > case.head_dim and inputs["scale"] == case.head_dim ** -0.5
    padded = dict(inputs, **{name: _head_dim.pad_head_dim(inputs[name], tile) for name in ("q", "k", "v")})
    out, lse, _ = run_emulated(emulator, padded)
    assert out.shape[-1] == tile and (out[..., case.head_dim:] == 0).all()
    check_against_reference(out[..., :case.head_dim], lse, inputs)
