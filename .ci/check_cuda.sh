#!/usr/bin/env bash
# Compile check of the CUDA sources on a machine without a GPU (the CI guard that a CUDA syntax or
# type error turns CI red even though nothing here can run the kernels):
#   - every csrc/cuda/*.cu: nvcc -c for sm_80 and for sm_90 (they are torch-free: nvcc alone suffices);
#   - every csrc/cuda/*.cpp binding: g++ -fsyntax-only against the installed torch's headers and the
#     CUDA toolkit's headers.
# Prints each check with its compiler output, the totals and the time; exits 1 if any check failed.
# Environment: PYTHON (python3), NVCC (nvcc), CXX (g++), CUDA_HOME (/usr/local/cuda),
# CHECK_CUDA_JOBS (2 parallel compiles).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
JOBS=${CHECK_CUDA_JOBS:-2}
start=$(date +%s)

command -v "$NVCC" >/dev/null || { echo "check_cuda: nvcc not found (set NVCC or PATH)" >&2; exit 2; }
shopt -s nullglob
cu_files=(csrc/cuda/*.cu)
cpp_files=(csrc/cuda/*.cpp)
if [ $((${#cu_files[@]} + ${#cpp_files[@]})) -eq 0 ]; then
  echo "check_cuda: no csrc/cuda/*.cu or csrc/cuda/*.cpp files" >&2
  exit 2
fi

# The language flags of setup.py's CUDA extension. Optimizations off (host -O0, cicc -O0, ptxas -O0):
# parsing, template instantiation, code generation and assembly still run, in a third of the time
# (measured here: cicc 9.0 -> 2.0 s, ptxas 10.3 -> 4.8 s for softmax.cu on sm_90).
nvcc_flags=(-std=c++17 -I csrc -O0 -Xcicc -O0 -Xptxas -O0 --use_fast_math -DFASTFORMER_WITH_CUDA=1)
# torch's cpp_extension adds these to every nvcc command (e.g. -D__CUDA_NO_HALF_CONVERSIONS__, which
# removes __half's implicit conversions): check with them too.
mapfile -t torch_nvcc_flags < <("$PYTHON" -c 'from torch.utils import cpp_extension; print("\n".join(cpp_extension.COMMON_NVCC_FLAGS))')
nvcc_flags+=("${torch_nvcc_flags[@]}")
# The CPU torch wheel ships the c10/cuda headers without their generated cuda_cmake_macros.h (it only
# defines a shared-library export macro); C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it.
mapfile -t torch_includes < <("$PYTHON" -c 'from torch.utils import cpp_extension; print("\n".join(cpp_extension.include_paths()))')
# torch and CUDA headers are system headers: -Wall reports warnings in our code only.
cxx_flags=(-std=c++17 -fsyntax-only -Wall -DFASTFORMER_WITH_CUDA=1 -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -I csrc
           -isystem "$CUDA_HOME/include")
for inc in "${torch_includes[@]}"; do cxx_flags+=(-isystem "$inc"); done

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
checks=0

# check LABEL COMMAND...: runs in the background (at most $JOBS at once); a failure leaves LABEL.failed.
check() {
  local label=$1 log="$log_dir/$checks"
  shift
  checks=$((checks + 1))
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  (
    if "$@" >"$log" 2>&1; then
      echo "ok    $label"
      sed 's/^/      /' "$log"
    else
      echo "FAIL  $label"
      echo "      \$ $*"
      sed 's/^/      /' "$log"
      touch "$log.failed"
    fi
  ) &
}

for f in "${cu_files[@]}"; do
  for arch in sm_80 sm_90; do
    check "nvcc -arch=$arch $f" "$NVCC" "${nvcc_flags[@]}" -arch="$arch" -c -o /dev/null "$f"
  done
done
for f in "${cpp_files[@]}"; do
  check "$CXX -fsyntax-only $f" "$CXX" "${cxx_flags[@]}" "$f"
done
wait

failed=$(find "$log_dir" -name '*.failed' | wc -l)
nvcc_version=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
torch_version=$("$PYTHON" -c 'import torch; print(torch.__version__)')
echo "check_cuda: ${#cu_files[@]} .cu files x {sm_80, sm_90} (nvcc $nvcc_version), ${#cpp_files[@]} bindings" \
     "($CXX $("$CXX" -dumpfullversion), torch $torch_version headers): $((checks - failed))/$checks passed" \
     "in $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ] || { echo "check_cuda: FAILED" >&2; exit 1; }
