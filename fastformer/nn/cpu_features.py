"""Which low-precision matmuls this CPU runs natively, and what is missing when it does not.

Measured on the 2-core AMD EPYC development VM (torch 2.13.0, oneDNN; [128x768]x[768x3072], 2 threads), with
ONEDNN_MAX_CPU_ISA lowering the ISA oneDNN may use:
  - int8 (torch._int_mm, s8 x s8 -> s32): with AVX-512 VNNI 0.88 ms and bit-exact; at AVX512_CORE (no VNNI)
    3.0 ms and at AVX2 2.2 ms, and NOT exact (the non-VNNI path sums u8 x s8 pairs in saturating int16);
  - bf16 (F.linear on bf16): with AVX512_BF16 2.0 ms (fp32 3.3 ms); at AVX512_CORE 17 ms, at AVX2 22 ms.
So int8 needs VNNI (avx512_vnni, avx_vnni or AMX int8) and bf16 needs avx512_bf16 or AMX bf16; without them a
mode is refused, never run slower or wrong under its name.
"""
import functools
import os
import platform

# mode -> (flags of which any one suffices, what they are called in the error message)
REQUIRED_FLAGS = {
    "int8": (("avx512_vnni", "avx_vnni", "amx_int8"), "VNNI int8 dot products (avx512_vnni, avx_vnni or amx_int8)"),
    "bf16": (("avx512_bf16", "amx_bf16"), "native bf16 dot products (avx512_bf16 or amx_bf16)"),
}
# ONEDNN_MAX_CPU_ISA values that still allow each mode's instructions (oneDNN's names, upper case).
_ONEDNN_ISAS = {
    "int8": ("AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE_VNNI", "AVX512_CORE_BF16", "AVX512_CORE_FP16",
             "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16",
             "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"),
    "bf16": ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
             "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL"),
}


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where they cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def missing_for(mode: str) -> str | None:
    """None if this CPU runs `mode` ("int8" or "bf16") natively, else what is missing, in words."""
    flags, described = REQUIRED_FLAGS[mode]
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"{mode} needs an x86-64 CPU with {described}; this is {platform.machine() or 'an unknown CPU'}"
    present = cpu_flags()
    if not present:
        return f"{mode} needs {described}, and /proc/cpuinfo could not be read to check for them"
    if not present & set(flags):
        return f"{mode} needs {described}; this CPU has none of them"
    limit = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if limit and limit not in _ONEDNN_ISAS[mode]:
        return f"{mode} needs {described}, and ONEDNN_MAX_CPU_ISA={limit} keeps oneDNN from using them"
    return None
