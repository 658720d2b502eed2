"""Kernel benchmarks: each fused op against the unfused PyTorch expression it replaces, timed
interleaved in the same run (medians), with effective bandwidth.

Used by `fastformer bench --ops` and by bench/test_ops_cpu.py (pytest-benchmark).
"""
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fastformer import ops

# The target shapes: BERT-base tokens x hidden, and a larger [4096, 1024].
CPU_SHAPES = [(1024, 768), (4096, 1024)]
# Attention at BERT-base shapes [B, H, S, D], half the batch padded to 100 of 128 tokens.
ATTENTION_SHAPE = (8, 12, 128, 64)
SOFTMAX_SCALE = 0.125  # 1/sqrt(64), BERT's attention scale


@dataclass
class OpCase:
    name: str  # e.g. "add+layer_norm"
    shape: tuple
    ours: Callable[[], object]
    baseline: Callable[[], object]
    baseline_name: str
    bytes_moved: int  # bytes the ideal fused op reads + writes


def _norm_cases(shape, dtype, device, backend):
    rows, n = shape
    x, r = torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device)
    w, b = torch.randn(n, dtype=dtype, device=device), torch.randn(n, dtype=dtype, device=device)
    e = x.element_size() * rows * n
    return [
        OpCase("layer_norm", shape, lambda: ops.layer_norm(x, w, b, backend=backend),
               lambda: F.layer_norm(x, (n,), w, b), "F.layer_norm(x)", 2 * e),
        OpCase("add+layer_norm", shape, lambda: ops.layer_norm(x, w, b, residual=r, backend=backend),
               lambda: F.layer_norm(x + r, (n,), w, b), "F.layer_norm(x + r)", 4 * e),
        OpCase("add+rms_norm", shape, lambda: ops.rms_norm(x, w, residual=r, backend=backend),
               lambda: F.rms_norm(x + r, (n,), w, 1e-6), "F.rms_norm(x + r)", 4 * e),
    ]


def _softmax_cases(shape, dtype, device, backend):
    rows, n = shape
    x = torch.randn(shape, dtype=dtype, device=device)
    # A padding-style additive mask broadcast over rows: the last eighth of the keys masked.
    mask = torch.zeros(n, dtype=dtype, device=device)
    mask[n - n // 8:] = float("-inf")
    e = x.element_size() * rows * n
    return [
        OpCase("softmax", shape, lambda: ops.softmax(x, backend=backend),
               lambda: torch.softmax(x, -1), "torch.softmax(x)", 2 * e),
        OpCase("masked_scaled_softmax", shape,
               lambda: ops.softmax(x, scale=SOFTMAX_SCALE, mask=mask, backend=backend),
               lambda: torch.softmax(x * SOFTMAX_SCALE + mask, -1), "softmax(x * scale + mask)", 2 * e),
    ]


def _attention_case(shape, dtype, device, backend):
    batch, heads, seq, head_dim = shape
    q, k, v = (torch.randn(shape, dtype=dtype, device=device) for _ in range(3))  # [B, H, S, D]
    keep = torch.ones(batch, seq, dtype=torch.bool, device=device)  # [B, S], True = attend
    keep[batch // 2:, 100:] = False
    sdpa_mask = keep[:, None, None, :]  # [B, 1, 1, S], SDPA's bool convention is the same
    return OpCase("attention(padded)", shape, lambda: ops.attention(q, k, v, key_padding_mask=keep, backend=backend),
                  lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask),
                  "F.scaled_dot_product_attention", 4 * q.numel() * q.element_size())


def cases(shapes=CPU_SHAPES, dtype=torch.float32, device="cpu", backend=None) -> list[OpCase]:
    out = []
    for shape in shapes:
        out += _norm_cases(shape, dtype, device, backend) + _softmax_cases(shape, dtype, device, backend)
    return out + [_attention_case(ATTENTION_SHAPE, dtype, device, backend)]


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns, reps: int = 50, warmup: int = 5, device="cpu") -> list[float]:
    """Median seconds per call of each fn, alternating between them so drift hits all equally."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    for _ in range(reps):
        for i, fn in enumerate(fns):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def run(shapes=CPU_SHAPES, dtype=torch.float32, device="cpu", backend=None, reps=50, progress=None) -> list[dict]:
    rows = []
    all_cases = cases(shapes, dtype, device, backend)
    for i, case in enumerate(all_cases):
        if progress:
            progress(i, len(all_cases), case)
        ours_s, base_s = time_interleaved([case.ours, case.baseline], reps=reps, device=device)
        rows.append({
            "op": case.name, "shape": list(case.shape), "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "baseline": case.baseline_name,
            "ours_ms": ours_s * 1e3, "baseline_ms": base_s * 1e3, "speedup": base_s / ours_s,
            "ours_GBps": case.bytes_moved / ours_s / 1e9,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'op':<22} {'shape':<13} {'ours ms':>9} {'torch ms':>9} {'speedup':>8} {'GB/s':>7}  baseline"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['op']:<22} {shape:<13} {r['ours_ms']:>9.3f} {r['baseline_ms']:>9.3f} "
                     f"{r['speedup']:>7.2f}x {r['ours_GBps']:>7.1f}  {r['baseline']}")
    return "\n".join(lines)
