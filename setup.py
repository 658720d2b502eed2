"""Builds fastformer._C: the CPU kernels always, the CUDA kernels when a CUDA torch and nvcc exist.

Environment:
  FASTFORMER_CUDA=auto|0|1   build the CUDA kernels (auto: when torch has CUDA and nvcc is found)
  TORCH_CUDA_ARCH_LIST       GPU targets (default "8.0;9.0")
  FASTFORMER_CPU_AVX2=auto|0|1  compile the CPU kernels with AVX2+FMA (auto: when this CPU has them)
"""
import glob
import os

from setuptools import setup

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    choice = os.environ.get("FASTFORMER_CUDA", "auto").lower()
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"FASTFORMER_CUDA must be auto, 0 or 1, got {choice!r}")
    if choice == "0":
        return False
    available = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    if choice == "1" and not available:
        raise RuntimeError(
            "FASTFORMER_CUDA=1 but torch has no CUDA "
            f"(torch.version.cuda={torch.version.cuda}) or nvcc was not found (CUDA_HOME={cpp_extension.CUDA_HOME})"
        )
    return available


def _cpu_has_avx2() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def _cpu_flags() -> list[str]:
    choice = os.environ.get("FASTFORMER_CPU_AVX2", "auto").lower()
    use_avx2 = choice == "1" or (choice == "auto" and _cpu_has_avx2())
    # -fopenmp: at::parallel_for is inline in ATen's headers and runs serially unless the kernel's
    # own translation unit is compiled with OpenMP (measured: the softmax kernel used one thread of two).
    # The OpenMP runtime is torch's own libgomp.so.1, already loaded when fastformer._C is imported.
    flags = ["-O3", "-std=c++17", "-fno-math-errno", "-fopenmp"]
    if use_avx2:
        # Same ISA flags torch uses for its own AVX2 kernels; a private CPU_CAPABILITY namespace keeps
        # our at::vec instantiations from colliding with libtorch's.
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=fastformer_avx2"]
    else:
        flags += ["-DCPU_CAPABILITY=fastformer_default"]
    return flags


def _extension():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = _cpu_flags()
    if not _want_cuda():
        return cpp_extension.CppExtension(
            "fastformer._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
            include_dirs=[os.path.join(ROOT, "csrc")],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu"))
    return cpp_extension.CUDAExtension(
        "fastformer._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],
        extra_compile_args={
            "cxx": cxx + ["-DFASTFORMER_WITH_CUDA=1"],
            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", "-DFASTFORMER_WITH_CUDA=1"],
        },
    )


setup(
    packages=["fastformer", "fastformer.ops", "fastformer.nn", "fastformer.models", "fastformer.hf",
              "fastformer.modelbench", "fastformer.kernels"],
    package_data={"fastformer.modelbench": ["sentences.txt"]},  # the main benchmark's input text
    package_dir={"fastformer.kernels": "kernels"},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
