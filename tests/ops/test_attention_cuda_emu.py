"""The CUDA attention kernels (csrc/cuda/attention.cu) run on the CPU under the host emulator in
tests/cuda_emu/, against the materialized reference: indexing, masking, online softmax, the split-KV
combine and the cp.async pipeline are checked here without a GPU (tests/ops/test_attention_cuda.py
runs the same cases on a real GPU). The emulator needs g++ and the CUDA headers (CUDA_HOME or
/usr/local/cuda); it compiles the unmodified attention.cu with tests/cuda_emu/cuda/device_api.cuh
standing in for the inline-PTX header, ~20 s once per source change (cached under build/cuda_emu/).
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from tests.attention_kernel_cases import (FP32_CASES, PREFILL_CASES, SPLIT_CASES, AttentionCase,
                                         check_against_reference, make_inputs)

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "csrc/cuda/attention.cu", ROOT / "tests/cuda_emu/emu_runtime.cpp",
           ROOT / "tests/cuda_emu/attention_capi.cpp"]
HEADERS = [ROOT / "csrc/cuda/attention.h", ROOT / "csrc/cuda/common.h", ROOT / "csrc/cuda/philox.cuh",
           ROOT / "tests/cuda_emu/cuda/device_api.cuh"]
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


def _cuda_include_dir() -> Path | None:
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "include/cuda_fp16.h").exists():
            return Path(home) / "include"
    return None


def load_emulator() -> ctypes.CDLL:
    """Builds (once per source change) and loads the emulated kernels; skips without g++ or CUDA headers."""
    include = _cuda_include_dir()
    if include is None or shutil.which("g++") is None:
        pytest.skip("the CUDA host emulator needs g++ and the CUDA headers (CUDA_HOME or /usr/local/cuda)")
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS)).hexdigest()[:16]
    library = ROOT / "build/cuda_emu" / f"libattention_emu_{digest}.so"
    if not library.exists():
        library.parent.mkdir(parents=True, exist_ok=True)
        partial = library.with_suffix(f".{os.getpid()}.tmp")
        subprocess.run(["g++", "-std=c++17", "-O2", "-fno-strict-aliasing", "-fPIC", "-shared",
                        "-I", str(ROOT / "tests/cuda_emu"), "-I", str(ROOT / "csrc"), "-I", str(include),
                        "-x", "c++", str(SOURCES[0]), "-x", "none", *map(str, SOURCES[1:]), "-o", str(partial)],
                       check=True)
        partial.rename(library)
    lib = ctypes.CDLL(str(library))
    lib.emu_attention_fwd.restype = ctypes.c_int
    return lib


@pytest.fixture(scope="module")
def emulator():
    return load_emulator()


def _ptr(t):
    return ctypes.c_void_p(t.data_ptr() if t is not None else 0)


SCHEDULES = {"round_robin": 0, "low_first": 1, "high_first": 2}  # emu::SchedulePolicy


def run_emulated(lib, inputs, *, sm_count=132, late_copies=True, schedule="round_robin"):
    """torch.ops.fastformer.attention_fwd's (out, lse) computed by the CUDA kernels under the emulator,
    and the plan (split_kv, num_splits, chunk_keys) the launcher chose."""
    q, k, v = inputs["q"], inputs["k"], inputs["v"]
    bias, mask = inputs["attn_bias"], inputs["key_padding_mask"]
    rel_table, rel_lut = inputs["rel_table"], inputs["rel_lut"]
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    out = torch.empty(B, H, Sq, D, dtype=q.dtype)  # [B, H, Sq, D]
    lse = torch.empty(B, H, Sq, dtype=torch.float32)  # [B, H, Sq]
    aligned = all(t.data_ptr() % 16 == 0 and all(s * t.element_size() % 16 == 0 for s in t.stride()[:3])
                  for t in (q, k, v))
    ints = [DTYPE_CODES[q.dtype], B, H, Hkv, Sq, Sk, D, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            int(aligned), DTYPE_CODES[bias.dtype] if bias is not None else 0,
            *(bias.stride() if bias is not None else (0,) * 4), *(mask.stride() if mask is not None else (0, 0)),
            DTYPE_CODES[rel_table.dtype] if rel_table is not None else 0,
            *(rel_table.stride() if rel_table is not None else (0, 0)),
            rel_table.shape[0] if rel_table is not None else 0, rel_lut.stride(0) if rel_lut is not None else 0,
            rel_lut.numel() if rel_lut is not None else 0, int(inputs["rel_bidirectional"]), int(inputs["causal"]),
            inputs["seed"]]
    ptrs = (ctypes.c_void_p * 9)(*[_ptr(t) for t in (q, k, v, out, lse, bias, mask, rel_table, rel_lut)])
    plan = (ctypes.c_int64 * 3)()
    err = lib.emu_attention_fwd(ptrs, (ctypes.c_int64 * len(ints))(*ints),
                                (ctypes.c_double * 2)(inputs["scale"], inputs["dropout_p"]), sm_count,
                                int(late_copies), SCHEDULES[schedule], plan)
    assert err == 0, f"launcher returned cudaError {err}"
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
