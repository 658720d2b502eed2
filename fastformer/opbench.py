"""Kernel benchmarks: each fused op against the unfused PyTorch expression it replaces, timed
interleaved in the same run (medians), with effective bandwidth (memory-bound ops) or FLOP rate
(attention) and that rate as a fraction of the machine's limit measured in the same run: the copy
bandwidth (bytes read + written by `dst.copy_(src)`) and the matmul rate (a square matmul in the
op's dtype).

Used by `fastformer bench --ops` and by bench/test_ops_cpu.py (pytest-benchmark).
"""
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from fastformer import ops
from fastformer.modelbench.timing import sample_interleaved

# The target shapes: BERT-base tokens x hidden, and a larger [4096, 1024].
CPU_SHAPES = [(1024, 768), (4096, 1024)]
# Attention at BERT-base shapes [B, H, S, D], half the batch padded to 100 of 128 tokens.
ATTENTION_SHAPE = (8, 12, 128, 64)
# Packed (varlen) attention at the same shape: 8 sequences of 16, 32, ..., 128 tokens (56% of the padded positions).
VARLEN_LENGTHS = tuple(range(16, 129, 16))
SOFTMAX_SCALE = 0.125  # 1/sqrt(64), BERT's attention scale


@dataclass
class OpCase:
    name: str  # e.g. "add+layer_norm"
    shape: tuple
    ours: Callable[[], object]
    baseline: Callable[[], object]
    baseline_name: str
    bytes_moved: int  # bytes the ideal fused op reads + writes
    flops: int | None = None  # compute-bound ops (attention): floating-point operations per call


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
                  "F.scaled_dot_product_attention", 4 * q.numel() * q.element_size(),
                  flops=4 * batch * heads * seq * seq * head_dim)  # QK^T and PV: 2 * S * S * D multiply-adds each


def _varlen_attention_case(shape, dtype, device, backend):
    """varlen_attention on the packed sequences against ff.ops.attention on the same batch padded to S."""
    batch, heads, seq, head_dim = shape
    lengths = torch.tensor(VARLEN_LENGTHS[:batch], device=device)
    cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)  # [B + 1]
    total = int(lengths.sum())
    q, k, v = (torch.randn(total, heads, head_dim, dtype=dtype, device=device) for _ in range(3))  # [T, H, D]
    keep = torch.arange(seq, device=device) < lengths[:, None]  # [B, S], True = attend (right padding)
    padded = [torch.zeros(batch, seq, heads, head_dim, dtype=dtype, device=device) for _ in range(3)]
    for x, x_padded in zip((q, k, v), padded):
        x_padded[keep] = x
    q_pad, k_pad, v_pad = (x.transpose(1, 2) for x in padded)  # [B, H, S, D]
    real_pairs = int((lengths * lengths).sum())
    return OpCase("varlen_attention", (batch, heads, seq, head_dim),
                  lambda: ops.varlen_attention(q, k, v, cu_seqlens, cu_seqlens, seq, seq, backend=backend),
                  lambda: ops.attention(q_pad, k_pad, v_pad, key_padding_mask=keep, backend=backend),
                  "ff.ops.attention(padded)", 4 * q.numel() * q.element_size(),
                  flops=4 * heads * real_pairs * head_dim)  # the real sequences' QK^T and PV only


def cases(shapes=CPU_SHAPES, dtype=torch.float32, device="cpu", backend=None) -> list[OpCase]:
    out = []
    for shape in shapes:
        out += _norm_cases(shape, dtype, device, backend) + _softmax_cases(shape, dtype, device, backend)
    return out + [_attention_case(ATTENTION_SHAPE, dtype, device, backend),
                  _varlen_attention_case(ATTENTION_SHAPE, dtype, device, backend)]


def _median_seconds(fns, reps: int, device) -> list[float]:
    return [statistics.median(s) for s in sample_interleaved(fns, reps=reps, warmup=5, device=device)]


# Sizes for the machine limits: a copy far larger than the last-level cache (the CPU here has 32 MB of
# L3, H100 / H200 50 MB of L2) and a matmul large enough to reach the peak rate.
LIMIT_COPY_BYTES = {"cpu": 128 << 20, "cuda": 1 << 30}
LIMIT_MATMUL_N = {"cpu": 1024, "cuda": 8192}


def machine_limits(dtype=torch.float32, device="cpu", reps: int = 10) -> dict:
    """The copy bandwidth (GB/s, bytes read + written) and matmul rate (TFLOP/s, in `dtype`) here, now."""
    kind = torch.device(device).type
    src = torch.empty(LIMIT_COPY_BYTES[kind] // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    n = LIMIT_MATMUL_N[kind]
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    copy_s, matmul_s = _median_seconds([lambda: dst.copy_(src), lambda: a @ b], reps, device)
    copy_bytes = src.numel() * src.element_size()
    return {"copy_GBps": 2 * copy_bytes / copy_s / 1e9, "matmul_TFLOPs": 2 * n**3 / matmul_s / 1e12,
            "copy_bytes": copy_bytes, "matmul_n": n, "matmul_dtype": str(dtype).removeprefix("torch.")}


def run(shapes=CPU_SHAPES, dtype=torch.float32, device="cpu", backend=None, reps=50, progress=None,
        limits: dict | None = None) -> list[dict]:
    """One row per case; with `limits` (machine_limits()) each row also gets its rate as a % of the limit."""
    rows = []
    all_cases = cases(shapes, dtype, device, backend)
    for i, case in enumerate(all_cases):
        if progress:
            progress(i, len(all_cases), case)
        ours_s, base_s = _median_seconds([case.ours, case.baseline], reps, device)
        row = {
            "op": case.name, "shape": list(case.shape), "dtype": str(dtype).replace("torch.", ""),
            "device": str(device), "baseline": case.baseline_name,
            "ours_ms": ours_s * 1e3, "baseline_ms": base_s * 1e3, "speedup": base_s / ours_s,
            "ours_GBps": case.bytes_moved / ours_s / 1e9,
            "ours_TFLOPs": case.flops / ours_s / 1e12 if case.flops else None,
            "bound": "compute" if case.flops else "memory",
        }
        if limits:
            row["pct_of_limit"] = 100 * (row["ours_TFLOPs"] / limits["matmul_TFLOPs"] if case.flops
                                         else row["ours_GBps"] / limits["copy_GBps"])
        rows.append(row)
    return rows


def format_table(rows: list[dict], limits: dict | None = None) -> str:
    lines = []
    if limits:
        lines.append(f"machine limits measured in this run: copy {limits['copy_GBps']:.1f} GB/s (read + written, "
                     f"{limits['copy_bytes'] >> 20} MiB: memory, not cache; an op whose tensors fit in cache can pass "
                     f"100%), {limits['matmul_dtype']} matmul {limits['matmul_TFLOPs'] * 1e3:.0f} GFLOP/s "
                     f"({limits['matmul_n']}^3)")
    head = (f"{'op':<22} {'shape':<13} {'ours ms':>9} {'torch ms':>9} {'speedup':>8} {'rate':>13} {'% limit':>8}"
            f"  baseline")
    lines += [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        rate = f"{r['ours_TFLOPs'] * 1e3:.1f} GFLOP/s" if r["bound"] == "compute" else f"{r['ours_GBps']:.1f} GB/s"
        pct = f"{r['pct_of_limit']:.0f}%" if "pct_of_limit" in r else "-"
        lines.append(f"{r['op']:<22} {shape:<13} {r['ours_ms']:>9.3f} {r['baseline_ms']:>9.3f} "
                     f"{r['speedup']:>7.2f}x {rate:>13} {pct:>8}  {r['baseline']}")
    return "\n".join(lines)
