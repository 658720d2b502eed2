"""Facts recorded with every benchmark result: machine, devices, library versions, git sha, time."""
import datetime
import importlib.metadata
import os
import platform
import subprocess

import torch

_LIBRARIES = ("fastformer", "torch", "triton", "transformers", "onnxruntime", "numpy")


def git_sha() -> str | None:
    """The checkout's HEAD (with -dirty when it has uncommitted changes); outside a git checkout (a copied
    tree on a GPU machine) $FASTFORMER_GIT_SHA, else None."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                             cwd=repo).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, cwd=repo).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FASTFORMER_GIT_SHA")
    return sha + ("-dirty" if dirty else "")


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiled_cpu_isa() -> str | None:
    try:
        from fastformer import _C
    except ImportError:  # a source tree without the extension built
        return None
    return _C.cpu_isa


def describe() -> dict:
    facts = {
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.node(), "platform": platform.platform(), "python": platform.python_version(),
        "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        # What the CPU runs: the vector ISA torch's kernels detect and use here ("AVX512", "AVX2", ...).
        # Development VMs named alike ("AMD EPYC", 2 cores) have come with and without AVX-512, which moves
        # every CPU number.
        "cpu_isa_detected": torch.backends.cpu.get_cpu_capability(),
        # What was built: the ISA fastformer's own CPU kernels were compiled for ("avx2" or "default").
        "fastformer_compiled_cpu_isa": _compiled_cpu_isa(),
        # Other work on the machine while the benchmark ran (1-minute load average, at the end of the run).
        "load_average_1m": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda, "git_sha": git_sha(),
        "versions": {name: _version(name) for name in _LIBRARIES},
    }
    facts["versions"]["torch"] = torch.__version__  # the running one, with its +cpu / +cu suffix
    return facts
