"""Which kernel backend runs an op: "triton", "cuda", "cpu" or "reference" (plain PyTorch).

Auto (backend=None): on CPU tensors the C++ CPU kernels; on CUDA tensors the backend listed for the
op in GPU_AUTO. FASTFORMER_BACKEND overrides auto globally. An explicit backend that cannot run on
the given tensors raises a ValueError naming `backend` and saying why.
"""
import os

import torch

BACKENDS = ("triton", "cuda", "cpu", "reference")

# Auto choice on CUDA tensors. Triton until bench/gpu_check.sh has measured both GPU backends for an
# op on an H100/H200; update from bench/results/ (the faster median wins).
GPU_AUTO = {"layer_norm": "triton", "rms_norm": "triton", "softmax": "triton", "attention": "triton"}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend accumulates (and stores statistics) in: fp64 for fp64, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


_TRITON_IMPORT_ERROR = {}  # the answer, once asked: a failed import is not cached by Python and retries each time


# torch.compile runs this at trace time and keeps the answer as a constant of the graph (an lru_cache here
# made it trace through the cache wrapper and warn that it ignores the cache).
@torch.compiler.assume_constant_result
def _triton_import_error() -> str | None:
    if "triton" not in _TRITON_IMPORT_ERROR:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install raising anything
            _TRITON_IMPORT_ERROR["triton"] = f"triton cannot be imported ({type(e).__name__}: {e})"
        else:
            _TRITON_IMPORT_ERROR["triton"] = None
    return _TRITON_IMPORT_ERROR["triton"]


def _extension():
    from fastformer import _C

    return _C


def why_not(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on tensors on `device` here, else the reason."""
    if backend == "reference":
        return None
    if backend == "cpu":
        return None if device.type == "cpu" else f"the cpu backend runs on CPU tensors, got {device.type} tensors"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA tensors, got {device.type} tensors"
        if not _extension().cuda_built:
            return "fastformer._C was built without CUDA kernels (no CUDA torch or nvcc at build time, or FASTFORMER_CUDA=0)"
        return None
    if backend == "triton":
        err = _triton_import_error()
        if err:
            return err
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return None
        return f"triton runs on CUDA tensors (or on CPU tensors with TRITON_INTERPRET=1), got {device.type} tensors"
    raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


def resolve(op: str, backend: str | None, device: torch.device, dtype: torch.dtype | None = None) -> str:
    """The backend that runs `op` on tensors of `dtype` on `device` (the CUDA kernels have no fp64)."""
    chosen = _resolve(op, backend, device)
    if dtype == torch.float64 and chosen == "cuda":
        raise TypeError(f"{op} inputs must be float32, float16 or bfloat16 for the cuda backend, got torch.float64")
    return chosen


def _resolve(op: str, backend: str | None, device: torch.device) -> str:
    if backend is None:
        backend = os.environ.get("FASTFORMER_BACKEND") or None
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"the environment variable FASTFORMER_BACKEND={backend!r} is not a backend; valid "
                             f"values: {', '.join(BACKENDS)} (or unset it for auto)")
    if backend is None:
        if device.type == "cpu":
            return "cpu"
        if device.type == "cuda":
            preferred = GPU_AUTO[op]
            fallback = "cuda" if preferred == "triton" else "triton"
            for candidate in (preferred, fallback, "reference"):
                if why_not(candidate, device) is None:
                    return candidate
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    reason = why_not(backend, device)
    if reason is not None:
        raise ValueError(f"backend={backend!r} is not available for {op} here: {reason}")
    return backend


def available_backends() -> dict:
    """What was built, what can run here, and why not: {backend: {"built", "runs_on", "why_not"}}."""
    ext = _extension()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    no_gpu = "no CUDA device is visible to torch" + ("" if torch.version.cuda else " (torch is a CPU build)")
    built = {"reference": True, "cpu": True, "cuda": bool(ext.cuda_built), "triton": _triton_import_error() is None}
    report = {}
    for name in BACKENDS:
        runs_on = [d.type for d in devices if why_not(name, d) is None]
        reason = None
        if not runs_on:
            gpu = torch.device("cuda")
            reason = why_not(name, gpu) if len(devices) > 1 or not built[name] else no_gpu
            if name == "cuda" and not built[name] and len(devices) == 1:
                reason = f"{no_gpu}; {why_not(name, gpu)}"
        report[name] = {"built": built[name], "runs_on": runs_on, "why_not": reason}
    report["build"] = {"cpu_isa": ext.cpu_isa, "cuda_built": bool(ext.cuda_built), "torch": torch.__version__,
                       "gpu_auto": dict(GPU_AUTO), "triton_interpret": triton_interpreting()}
    return report
