"""The model benchmark's grid: for each device and dtype every requested backend is loaded once; at
each (batch, seq) the backends take the same inputs, are checked against the fp32 reference (Hugging
Face eager, float32, same device) on the real (unpadded) tokens and are timed interleaved, or in
alternating blocks when a backend's threads spin between calls. Every requested backend gets one row
per grid point: status "ok" with its numbers, or "unavailable" / "error" / "skipped" with the reason."""
import gc
import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch

from fastformer.modelbench import backends, inputs, machine, machine_load, models, timing, verdict

REFERENCE = "Hugging Face eager, float32, same device"
UNITS = {"median_ms": "ms", "p90_ms": "ms", "p99_ms": "ms", "tokens_per_s": "real (unpadded) input tokens / s",
         "real_tokens": "tokens of the batch that are not padding", "padded_tokens": "batch x padded length",
         "peak_mem_MiB": "MiB", "first_call_s": "s (includes torch.compile's compilation for hf+compile)",
         "speedup": "baseline median / this median", "max_abs_diff": "largest |difference| between this backend's "
         f"last hidden state (the decoder's for encoder-decoders) and the reference's ({REFERENCE}), over the "
         "real tokens"}
TIMING = {"interleaved": "interleaved rounds (one call of each backend per round, the order fixed)",
          "blocks": "alternating blocks (each round: per backend one untimed call, then up to 4 timed calls in a "
                    "row; the first backend rotates each round), because {spinning} keep their threads spinning "
                    "after a call, which would steal the cores from the next backend's timed calls; after their "
                    "blocks the process waits (at most 0.25 s) until its threads are idle"}


@dataclass
class BenchConfig:
    model: str | None = None  # None: the default checkpoint
    backends: list[str] = field(default_factory=lambda: list(backends.BACKENDS))
    batches: list[int] = field(default_factory=lambda: [1])
    seqs: list[int] = field(default_factory=lambda: [128])
    dtypes: list[str] = field(default_factory=lambda: ["float32"])
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    baseline: str = "hf-eager"
    reps: int = 20
    warmup: int = 1
    budget_s: float | None = 10.0  # per grid point: fewer timed rounds (at least 5) past this
    lengths: str = "real"  # inputs.LENGTHS: real sentences padded to the batch's longest, or exactly seq tokens


# How an allocation failure reads where it is not a torch.OutOfMemoryError: torch's CPU allocator, and
# ONNX Runtime's arena.
_OUT_OF_MEMORY_MESSAGES = ("out of memory", "can't allocate memory", "failed to allocate memory")


def _is_out_of_memory(e: Exception) -> bool:
    message = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or any(m in message for m in _OUT_OF_MEMORY_MESSAGES)


def _error_reason(e: Exception, batch: int, seq: int) -> str:
    if _is_out_of_memory(e):
        return f"out of memory at batch {batch} x seq {seq}: {str(e).splitlines()[0]}"
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _free(device: str):
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def why_not_device_dtype(device: str, dtype: torch.dtype) -> str | None:
    """None if this device and dtype can be benchmarked here, else the reason."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        return "no CUDA device here"
    if torch.device(device).type == "cpu" and dtype == torch.float16:
        return "float16 is not a CPU target (use bfloat16)"
    return None


def _why_not_shape(source: models.ModelSource, seq: int) -> str | None:
    if source.max_positions is not None and seq > source.max_positions:
        return f"seq {seq} exceeds the model's {source.max_positions} positions"
    return None


def timing_mode(device: str, names) -> str:
    """"blocks" on the CPU when one of the backends spins between calls, else "interleaved"."""
    spinning = torch.device(device).type == "cpu" and any(backends.BACKENDS[n].spins for n in names)
    return "blocks" if spinning else "interleaved"


class _Point:
    """One (device, dtype, batch, seq) of the grid: its rows, one per requested backend."""

    def __init__(self, common: dict, names: list[str], reference_error: str | None):
        self.rows = {name: {**common, "backend": name, "status": "ok", "reason": None} for name in names}
        self.reference_error = reference_error  # why the accuracy column is empty, if it is

    def fail(self, name: str, status: str, reason: str):
        self.rows[name].update(status=status, reason=reason)

    def ok(self) -> list[str]:
        return [name for name, row in self.rows.items() if row["status"] == "ok"]


def _measure_point(point: _Point, runners: dict, reference_runner, model_inputs: dict, config: BenchConfig,
                   device: str, batch: int, seq: int, advance: Callable[[], None] | None):
    reference = None
    real = model_inputs["attention_mask"].bool()  # [B, S]: padded positions' outputs are undefined
    if reference_runner is not None:
        try:
            reference = reference_runner(**model_inputs).float()[real]  # [real tokens, H]
        except Exception as e:  # the backends may still run; their accuracy column says why it is missing
            point.reference_error = _error_reason(e, batch, seq)
    calls = {}
    for name in point.ok():
        try:
            out, seconds, peak = timing.call_with_peak_memory(lambda r=runners[name]: r(**model_inputs), device)
        except Exception as e:
            point.fail(name, "error", _error_reason(e, batch, seq))
            _free(device)
            continue
        point.rows[name].update(first_call_s=seconds, peak_mem_MiB=peak,
                                max_abs_diff=None if reference is None else
                                (out.float().to(reference.device)[real] - reference).abs().max().item())
        calls[name] = lambda r=runners[name]: r(**model_inputs)
    del reference
    if not calls:
        return
    mode = timing_mode(device, calls)
    try:
        if mode == "blocks":
            samples = timing.sample_blocks(list(calls.values()), config.reps, config.warmup, progress=advance,
                                           budget_s=config.budget_s,
                                           spinning=[backends.BACKENDS[n].spins for n in calls])
        else:
            samples = timing.sample_interleaved(list(calls.values()), config.reps, config.warmup, device, advance,
                                                config.budget_s)
    except Exception as e:  # e.g. out of memory with every backend's activations alive at once
        for name in calls:
            point.fail(name, "error", "during the timed runs: " + _error_reason(e, batch, seq))
        return
    real_tokens, _ = inputs.token_counts(model_inputs)
    for name, s in zip(calls, samples):
        stats = timing.summarize(s)
        point.rows[name].update(stats, timing=mode, tokens_per_s=real_tokens / (stats["median_ms"] / 1e3))


def _add_speedups(rows: list[dict], baseline: str):
    base = next((r for r in rows if r["backend"] == baseline and r["status"] == "ok"), None)
    for r in rows:
        r["speedup"] = base["median_ms"] / r["median_ms"] if base and r["status"] == "ok" else None


def _load_all(names: list[str], ctx: backends.LoadContext) -> tuple[dict, dict]:
    runners, why_not = {}, {}
    for name in names:
        try:
            runners[name] = backends.BACKENDS[name].load(ctx)
        except backends.BackendUnavailable as e:
            why_not[name] = str(e)
        except Exception as e:  # a loader bug or an odd checkpoint must not stop the other backends
            why_not[name] = f"failed to load: {type(e).__name__}: {e}"
    return runners, why_not


def _load(config: BenchConfig, source, tokenizer, device: str, dtype: torch.dtype, threads: int, workdir: str):
    """Every requested backend and the fp32 reference for one device and dtype:
    (runners, {backend: why not}, reference runner or None, why no reference or None)."""
    not_here = why_not_device_dtype(device, dtype)
    if not_here:
        return {}, dict.fromkeys(config.backends, not_here), None, not_here
    # [2, <=16]: what the graph exporters and converters trace (with dynamic batch and sequence axes)
    example = inputs.make_inputs(source, tokenizer, 2, min(16, *config.seqs), device, config.lengths)
    ctx = backends.LoadContext(source, device, dtype, threads, workdir, example)
    runners, why_not = _load_all(config.backends, ctx)
    try:
        return runners, why_not, backends.reference(ctx), None
    except backends.BackendUnavailable as e:
        return runners, why_not, None, str(e)


def _grid_point(config: BenchConfig, source, tokenizer, device: str, dtype_name: str, batch: int, seq: int,
                loaded: tuple, progress) -> list[dict]:
    runners, why_not, reference_runner, reference_error = loaded
    common = {"model": source.name, "model_type": source.model_type, "device": device, "dtype": dtype_name,
              "batch": batch, "seq": seq}
    point = _Point(common, config.backends, reference_error)
    for name, reason in why_not.items():
        point.fail(name, "unavailable", reason)
    if progress:
        progress.point(f"{device} {dtype_name} batch {batch} x seq {seq}")
    model_inputs = None
    if point.ok():
        try:
            model_inputs = inputs.make_inputs(source, tokenizer, batch, seq, device, config.lengths)
        except Exception as e:
            for name in point.ok():
                point.fail(name, "error", "making the inputs: " + _error_reason(e, batch, seq))
    if model_inputs is not None:
        real_tokens, padded_tokens = inputs.token_counts(model_inputs)
        padded_seq = model_inputs["input_ids"].shape[1]
        for row in point.rows.values():
            row.update(padded_seq=padded_seq, real_tokens=real_tokens, padded_tokens=padded_tokens)
        shape_problem = _why_not_shape(source, padded_seq)
        for name in point.ok() if shape_problem else []:
            point.fail(name, "skipped", shape_problem)
        if point.ok():
            with torch.inference_mode():
                _measure_point(point, runners, reference_runner, model_inputs, config, device, batch, seq,
                               progress.round if progress else None)
    for row in point.rows.values():
        row.update(ours=backends.BACKENDS[row["backend"]].ours, quantized=backends.BACKENDS[row["backend"]].quantized)
        no_accuracy = row["status"] == "ok" and row.get("max_abs_diff") is None
        row["reference_error"] = point.reference_error if no_accuracy else None
    rows = list(point.rows.values())
    _add_speedups(rows, config.baseline)
    return rows


def _describe_timing(device: str, names: list[str]) -> str:
    clock = "CUDA events" if torch.device(device).type == "cuda" else "time.perf_counter"
    spinning = ", ".join(n for n in names if backends.BACKENDS[n].spins)
    return TIMING[timing_mode(device, names)].format(spinning=spinning) + f"; {clock}"


def _meta(config: BenchConfig, source, tokenizer, why_no_tokenizer) -> dict:
    return {**machine.describe(),
            "model": {"name": source.name, "path": source.path, "model_type": source.model_type, "kind": source.kind,
                      "weights": "random (latency does not depend on weight values)" if source.random_weights
                      else "from the checkpoint"},
            "inputs": inputs.describe_tokens(tokenizer, why_no_tokenizer, config.lengths), "lengths": config.lengths,
            "timed_call": source.timed_call, "reference": REFERENCE, "baseline": config.baseline,
            "reps": config.reps, "warmup_rounds": config.warmup, "budget_s_per_point": config.budget_s,
            "timing": {d: _describe_timing(d, config.backends) for d in config.devices},
            "memory": {d: timing.MEMORY_METHOD[torch.device(d).type] for d in config.devices},
            "units": UNITS, "backends": {n: backends.BACKENDS[n].description for n in config.backends}}


def run(config: BenchConfig, workdir: str, threads: int, progress=None, waited: dict | None = None) -> dict:
    """Runs the grid; returns {"meta": ..., "results": rows, "summary": verdicts}. Raises
    models.ModelSourceError when --model names nothing usable (nothing can run then). progress: a
    report.ProgressBar or None; waited: what machine_load.wait_quiet did before, for the JSON."""
    monitor = machine_load.LoadMonitor(threads)
    source = models.resolve(config.model, workdir)
    tokenizer, why_no_tokenizer = inputs.load_tokenizer(source)
    rows, verdicts = [], []
    for device, dtype_name in itertools.product(config.devices, config.dtypes):
        loaded = _load(config, source, tokenizer, device, getattr(torch, dtype_name), threads, workdir)
        for batch, seq in itertools.product(config.batches, config.seqs):
            point_rows = _grid_point(config, source, tokenizer, device, dtype_name, batch, seq, loaded, progress)
            point_load = monitor.sample()
            for row in point_rows:
                row["load_average_1m"] = point_load
            rows += point_rows
            verdicts.append(verdict.point_verdict(point_rows, busy_load=point_load if monitor.busy(point_load)
                                                  else None, threads=threads))
            _free(device)
        del loaded
        _free(device)
    meta = _meta(config, source, tokenizer, why_no_tokenizer)
    meta["load"] = {**monitor.describe(), "wait_quiet": waited}
    return {"meta": meta, "results": rows, "summary": verdict.summarize(verdicts)}
