"""Timing and statistics shared by the model and kernel benchmarks: several callables timed
interleaved (one call of each per round, so load drift on a shared machine hits all of them alike),
CUDA events on the GPU, wall clock on the CPU, and peak memory of one call."""
import itertools
import resource
import statistics
import sys
import time
from typing import Callable, Sequence

import torch


def _is_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def sample_interleaved(fns: Sequence[Callable[[], object]], reps: int, warmup: int = 3, device="cpu",
                       progress: Callable[[], None] | None = None, budget_s: float | None = None,
                       min_reps: int = 5) -> list[list[float]]:
    """Seconds per call of each fn, `reps` samples each, after `warmup` untimed rounds; with budget_s,
    fewer (at least min_reps) when the timed rounds have already taken budget_s seconds.

    On CUDA each call is bracketed by CUDA events (device time between the two records, which includes
    any gap where the GPU waits for the host to launch work); the events are read after each round.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples = [[] for _ in fns]
    cuda = _is_cuda(device)
    timed_since = time.perf_counter()
    for done in range(reps):
        if budget_s is not None and done >= min_reps and time.perf_counter() - timed_since > budget_s:
            break
        if cuda:
            events = []
            for fn in fns:
                before, after = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                before.record()
                fn()
                after.record()
                events.append((before, after))
            torch.cuda.synchronize()
            for s, (before, after) in zip(samples, events):
                s.append(before.elapsed_time(after) / 1e3)
        else:
            for s, fn in zip(samples, fns):
                t0 = time.perf_counter()
                fn()
                s.append(time.perf_counter() - t0)
        if progress:
            progress()
    return samples


def wait_until_idle(max_s: float = 0.25, window_s: float = 0.01, busy_fraction: float = 0.2) -> float:
    """Sleeps until this process's threads stop using the CPU (less than busy_fraction of a core over a
    window), at most max_s; returns the seconds waited. Thread pools that spin after a call keep going for
    tens of ms (measured: ONNX Runtime's ~50 ms of CPU after a 1 ms call), and on a 2-core machine torch's
    next calls run up to 50x slower beside them."""
    started = time.perf_counter()
    while time.perf_counter() - started < max_s:
        cpu_before = time.process_time()  # every thread of the process
        time.sleep(window_s)
        if time.process_time() - cpu_before < busy_fraction * window_s:
            break
    return time.perf_counter() - started


def sample_blocks(fns: Sequence[Callable[[], object]], reps: int, warmup: int = 3, block: int = 4,
                  progress: Callable[[], None] | None = None, budget_s: float | None = None,
                  min_reps: int = 5, spinning: Sequence[bool] | None = None) -> list[list[float]]:
    """Like sample_interleaved on the CPU, for backends whose threads spin between calls: each round gives
    every fn a block of one untimed call (it refills the caches) and up to `block` timed calls in a row,
    the starting fn rotating each round so load drift still hits every fn alike. After the block of a
    spinning fn (spinning[i]) the process waits until its threads have gone idle (wait_until_idle)."""
    spinning = spinning or [False] * len(fns)
    for _ in range(warmup):
        for fn, spins in zip(fns, spinning):
            fn()
            if spins:
                wait_until_idle()
    samples = [[] for _ in fns]
    timed_since = time.perf_counter()
    for start in itertools.count():
        done = min(len(s) for s in samples)
        if done >= reps or (budget_s is not None and done >= min_reps and time.perf_counter() - timed_since > budget_s):
            break
        for i in [(start + k) % len(fns) for k in range(len(fns))]:
            fns[i]()
            for _ in range(min(block, reps - len(samples[i]))):
                t0 = time.perf_counter()
                fns[i]()
                samples[i].append(time.perf_counter() - t0)
            if spinning[i]:
                wait_until_idle()
        if progress:
            progress()
    return samples


def summarize(samples: list[float]) -> dict:
    """median, p90 and p99 in milliseconds (linear interpolation between order statistics)."""
    if len(samples) < 2:
        only = samples[0] * 1e3
        return {"median_ms": only, "p90_ms": only, "p99_ms": only, "reps": len(samples)}
    cuts = statistics.quantiles(samples, n=100, method="inclusive")  # cuts[k-1] is the k-th percentile
    return {"median_ms": statistics.median(samples) * 1e3, "p90_ms": cuts[89] * 1e3, "p99_ms": cuts[98] * 1e3,
            "reps": len(samples)}


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


# How peak memory is measured, written next to the numbers in every output.
MEMORY_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated() during one call minus what was allocated before it "
            "(activations and workspace; the weights of every loaded backend stay resident and are not counted)",
    "cpu": "growth of the process's peak RSS (ru_maxrss) during this backend's first call at this shape; "
           "process-wide and monotone, so a backend that stays below an earlier peak shows 0: read it as how far "
           "this backend pushed the process's peak, not as its own footprint",
}


def call_with_peak_memory(fn: Callable[[], object], device) -> tuple[object, float, float]:
    """Runs fn once: (its output, seconds, peak memory in MiB as MEMORY_METHOD describes)."""
    if _is_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        return out, seconds, (torch.cuda.max_memory_allocated() - before) / 2**20
    before = _max_rss_bytes()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return out, seconds, (_max_rss_bytes() - before) / 2**20
