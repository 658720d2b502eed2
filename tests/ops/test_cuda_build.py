"""The CI guard for the CUDA sources: .ci/check_cuda.sh compiles every csrc/cuda/*.cu with nvcc for
sm_80 and sm_90 and syntax-checks every csrc/cuda/*.cpp binding against torch's headers, so a CUDA
syntax or type error turns CI red on machines without a GPU (the kernels themselves are tested by the
op tests' "cuda" backend on a GPU)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "check_cuda.sh"
NVCC = os.environ.get("NVCC", "nvcc")
CXX = os.environ.get("CXX", "g++")

needs_toolchain = pytest.mark.skipif(
    shutil.which(NVCC) is None or shutil.which(CXX) is None,
    reason=f"the CUDA compile check needs nvcc and a C++ compiler ({NVCC!r} or {CXX!r} not found)",
)


def _run_check(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(repo / ".ci" / "check_cuda.sh")], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=900)


@needs_toolchain
def test_cuda_sources_compile():
    result = _run_check(REPO)
    assert result.returncode == 0, f"check_cuda.sh failed:\n{result.stdout[-20000:]}\n{result.stderr[-4000:]}"
    assert "sm_80" in result.stdout and "sm_90" in result.stdout


@needs_toolchain
def test_check_fails_on_a_cuda_syntax_error(tmp_path):
    # A copy of the script next to one broken kernel file: only that file is compiled (a few seconds).
    (tmp_path / ".ci").mkdir()
    shutil.copy(SCRIPT, tmp_path / ".ci" / "check_cuda.sh")
    (tmp_path / "csrc" / "cuda").mkdir(parents=True)
    (tmp_path / "csrc" / "cuda" / "broken.cu").write_text(
        "__global__ void broken_kernel(float* out) { out[threadIdx.x] = 1.0f }\n")  # missing ';'
    result = _run_check(tmp_path)
    assert result.returncode != 0
    assert "FAIL" in result.stdout and "broken.cu" in result.stdout


def test_extension_sources_have_distinct_object_names():
    # torch's ninja build names each object after its source's stem within its folder: attention.cpp and
    # attention.cu in csrc/cuda both made csrc/cuda/attention.o, and the CUDA build failed on the first
    # GPU it met ("multiple rules generate .../attention.o") while every per-file check here passed.
    for folder in ("csrc", "csrc/cpu", "csrc/cuda"):
        stems = [p.stem for p in (REPO / folder).iterdir() if p.suffix in (".cpp", ".cu")]
        duplicated = sorted({s for s in stems if stems.count(s) > 1})
        assert not duplicated, f"{folder}: sources that would build the same object: {duplicated}"
