"""Memory-bound op benchmark: LayerNorm, RMSNorm and softmax on every backend, against PyTorch.

For each op (layer_norm, layer_norm with residual, rms_norm with residual, softmax with an additive
broadcast mask and a scale), mode (fwd, fwd+bwd), dtype (fp16, bf16) and shape, times the fastformer
backends "triton" and "cuda", the unfused PyTorch expression in eager mode ("eager", e.g.
F.layer_norm(x + r)) and torch.compile of that expression ("compile"). Reports the median time, the
bandwidth of the ideal fused op (bytes it must read and write / time), that bandwidth as a percentage
of the device-to-device copy bandwidth measured in the same run, and speedups over eager and compile.
Each backend's forward output is also checked against an fp32 evaluation of the expression.

    python bench/ops_gpu.py --out bench/results/ops.json     # full run on a GPU (~minutes)
    python bench/ops_gpu.py --smoke                          # tiny shapes; runs on CPU too

Results are printed as a table and written as JSON (device, versions, git sha, timestamp, rows) to
--out and as a Markdown table next to it (same name, .md), after every shape so that an interrupted
run keeps what it measured.
"""
import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import fastformer as ff
from fastformer import _backends
from fastformer.modelbench.machine import git_sha

GPU_BACKENDS = ("triton", "cuda")
TORCH_BACKENDS = ("eager", "compile")
ALL_BACKENDS = GPU_BACKENDS + TORCH_BACKENDS
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Rows x hidden. BERT-base at batch 8 x 128 tokens; the large ones are 32 MB (fp16) or more per tensor.
FULL_SHAPES = {"bert": (8 * 128, 768), "32kx1024": (32768, 1024), "16kx2048": (16384, 2048),
               "8kx4096": (8192, 4096), "4kx8192": (4096, 8192)}
SMOKE_SHAPES = {"tiny": (16, 96), "odd": (5, 97)}
# torch.compile costs seconds per case (a fresh static compile for each op, mode, dtype and shape), so
# by default it is measured at the BERT shape and one large shape only.
DEFAULT_COMPILE_SHAPES = ("bert", "bert-attn", "8kx4096", "tiny", "odd")
SOFTMAX_BATCH = 8  # softmax x is [8, 1, rows / 8, N] with its mask [8, 1, 1, N] (key padding)
# The attention probabilities of BERT-base at batch 8 x 128 tokens: [8, 12, 128, 128], mask [8, 1, 1, 128].
SOFTMAX_ATTENTION_SHAPE = ("bert-attn", (8, 12, 128, 128))
EPS = 1e-5
L2_FLUSH_BYTES = 256 << 20  # > the 50 MB L2 of H100 / H200: every rep starts from a cold L2


# ---- the ops --------------------------------------------------------------------------------------

@dataclass
class Op:
    """One benchmarked op: its unfused PyTorch expression and the fastformer call, same inputs."""
    name: str
    make_inputs: object  # (shape, dtype, device, generator) -> dict of tensors
    torch_expr: object  # (**inputs) -> output tensor or tuple
    fastformer: object  # (backend, **inputs) -> same as torch_expr
    grad_inputs: tuple  # inputs that get gradients in fwd+bwd
    fwd_bytes: object  # (inputs) -> bytes the ideal fused forward reads and writes
    bwd_bytes: object  # (inputs) -> bytes the ideal fused backward reads and writes


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def _norm_inputs(residual: bool, bias: bool):
    def make(shape, dtype, device, gen):
        rows, n = shape
        t = {"x": torch.randn(rows, n, generator=gen, device=device, dtype=dtype)}
        if residual:
            t["r"] = torch.randn(rows, n, generator=gen, device=device, dtype=dtype)
        t["w"] = 1 + 0.1 * torch.randn(n, generator=gen, device=device, dtype=dtype)
        if bias:
            t["b"] = 0.1 * torch.randn(n, generator=gen, device=device, dtype=dtype)
        return t
    return make


def _softmax_inputs(shape, dtype, device, gen):
    if len(shape) == 4:
        x_shape = shape
    else:
        rows, n = shape
        batch = SOFTMAX_BATCH if rows % SOFTMAX_BATCH == 0 else 1
        x_shape = (batch, 1, rows // batch, n)
    batch, n = x_shape[0], x_shape[-1]
    # Additive key-padding mask: 0 for kept keys, -inf for the last ~1/8 of each batch's keys.
    lengths = torch.randint(max(1, n - n // 8), n + 1, (batch,), generator=gen, device=device)
    keep = torch.arange(n, device=device)[None, :] < lengths[:, None]
    mask = torch.zeros(batch, 1, 1, n, device=device, dtype=dtype).masked_fill(~keep[:, None, None, :], -math.inf)
    return {"x": torch.randn(x_shape, generator=gen, device=device, dtype=dtype), "mask": mask,
            "scale": 1 / math.sqrt(64)}


def _norm_bytes(residual: bool, backward: bool):
    def count(t):
        rows_bytes = _nbytes(t["x"])
        params = _nbytes(*(t[k] for k in ("w", "b") if k in t))
        if not backward:  # read x (+ r), write out (+ x + r), read the parameters
            return rows_bytes * (4 if residual else 2) + params
        # read grad_out (+ grad of x + r) and the saved input, write grad_x; read w, write the param grads
        return rows_bytes * (4 if residual else 3) + params + params
    return count


def _layer_norm_residual_expr(x, r, w, b):
    s = x + r
    return F.layer_norm(s, (s.shape[-1],), w, b, EPS), s


def _rms_norm_residual_expr(x, r, w):
    s = x + r
    return F.rms_norm(s, (s.shape[-1],), w, EPS), s


OPS = {
    op.name: op for op in (
        Op("layer_norm", _norm_inputs(residual=False, bias=True),
           lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b, EPS),
           lambda backend, x, w, b: ff.ops.layer_norm(x, w, b, EPS, backend=backend),
           ("x", "w", "b"), _norm_bytes(False, False), _norm_bytes(False, True)),
        Op("layer_norm+residual", _norm_inputs(residual=True, bias=True), _layer_norm_residual_expr,
           lambda backend, x, r, w, b: ff.ops.layer_norm(x, w, b, EPS, residual=r, backend=backend),
           ("x", "r", "w", "b"), _norm_bytes(True, False), _norm_bytes(True, True)),
        Op("rms_norm+residual", _norm_inputs(residual=True, bias=False), _rms_norm_residual_expr,
           lambda backend, x, r, w: ff.ops.rms_norm(x, w, EPS, residual=r, backend=backend),
           ("x", "r", "w"), _norm_bytes(True, False), _norm_bytes(True, True)),
        Op("softmax+mask", _softmax_inputs,
           lambda x, mask, scale: torch.softmax(x * scale + mask, dim=-1),
           lambda backend, x, mask, scale: ff.ops.softmax(x, dim=-1, scale=scale, mask=mask, backend=backend),
           ("x",), lambda t: 2 * _nbytes(t["x"]) + _nbytes(t["mask"]), lambda t: 3 * _nbytes(t["x"])),
    )
}


# ---- timing ---------------------------------------------------------------------------------------

class Timer:
    """Median time of fn() in ms: CUDA events on a GPU (L2 flushed before each rep), wall clock on CPU."""

    def __init__(self, device: torch.device, target_ms: float, max_reps: int):
        self.device = device
        self.target_ms = target_ms
        self.max_reps = max_reps
        self.flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, fn, flush_l2: bool = True, reset=None) -> float:
        reset = reset or (lambda: None)
        reset()
        fn()  # first call: compilation, autotuning, allocator warm-up
        self._sync()
        start = time.perf_counter()
        warmups = 0
        while warmups < 3 or (time.perf_counter() - start) * 1e3 < 0.2 * self.target_ms and warmups < 100:
            reset()
            fn()
            self._sync()
            warmups += 1
        per_call_ms = max((time.perf_counter() - start) * 1e3 / warmups, 1e-3)
        reps = int(min(self.max_reps, max(5, self.target_ms / per_call_ms)))
        times = []
        if self.device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for begin, end in events:
                reset()
                if flush_l2:
                    self.flush.zero_()
                begin.record()
                fn()
                end.record()
            self._sync()
            times = [begin.elapsed_time(end) for begin, end in events]
        else:
            for _ in range(reps):
                reset()
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def copy_bandwidth_gbps(timer: Timer, device: torch.device, nbytes: int) -> float:
    """Device-to-device copy bandwidth, counting bytes read plus bytes written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src), flush_l2=False)
    return 2 * nbytes / (ms * 1e-3) / 1e9


# ---- one case -------------------------------------------------------------------------------------

@dataclass
class Row:
    op: str
    mode: str
    dtype: str
    shape_name: str
    shape: list
    backend: str
    ms: float | None = None
    gbps: float | None = None
    pct_of_copy: float | None = None
    speedup_vs_eager: float | None = None
    speedup_vs_compile: float | None = None
    max_abs_err: float | None = None
    status: str = "ok"  # ok | wrong (output check failed) | unavailable: why | error: what
    extra: dict = field(default_factory=dict)


def _as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


def _callable_for(op: Op, backend: str):
    """(kwargs) -> outputs for a backend, or raises with the reason it cannot run."""
    if backend == "eager":
        return op.torch_expr
    if backend == "compile":
        torch._dynamo.reset()  # a fresh compile per case: no cross-case recompile limits or reuse
        return torch.compile(op.torch_expr, dynamic=False)
    return lambda **kw: op.fastformer(backend, **kw)


def _why_not(op: Op, backend: str, device: torch.device, shape_name: str, compile_shapes) -> str | None:
    if backend == "compile" and device.type != "cuda":
        return "torch.compile is only benchmarked on GPUs (a CPU compile costs ~10-20 s per case)"
    if backend == "compile" and shape_name not in compile_shapes:
        return "shape not in --compile-shapes"
    if backend in GPU_BACKENDS:
        if op.name.startswith("softmax") and not hasattr(ff.ops, "softmax"):
            return "ff.ops.softmax is not in this build"
        return _backends.why_not(backend, device)
    return None


def _output_error(outs, ref32) -> float:
    return max((o.float() - r).abs().max().item() for o, r in zip(_as_tuple(outs), _as_tuple(ref32)))


def run_case(op: Op, mode: str, dtype_name: str, shape_name: str, shape, backends, compile_shapes, timer, copy_gbps,
             device, seed):
    dtype = DTYPES[dtype_name]
    gen = torch.Generator(device=device).manual_seed(seed)
    inputs = op.make_inputs(shape, dtype, device, gen)
    tensors = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    nbytes = op.fwd_bytes(inputs) + (op.bwd_bytes(inputs) if mode == "fwd+bwd" else 0)
    shape_list = list(tensors["x"].shape)
    # fp32 evaluation of the same expression, the yardstick of the output check.
    ref32 = op.torch_expr(**{k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()})
    eager_err = _output_error(op.torch_expr(**inputs), ref32)
    tolerance = 2 * eager_err + (1e-2 if dtype == torch.bfloat16 else 1e-3)

    rows = []
    for backend in backends:
        row = Row(op.name, mode, dtype_name, shape_name, shape_list, backend)
        rows.append(row)
        reason = _why_not(op, backend, device, shape_name, compile_shapes)
        if reason is not None:
            row.status = f"unavailable: {reason}"
            continue
        try:
            fn = _callable_for(op, backend)
            with torch.no_grad():
                row.max_abs_err = _output_error(fn(**inputs), ref32)
            if row.max_abs_err > tolerance or not math.isfinite(row.max_abs_err):
                row.status = "wrong"
            if mode == "fwd":
                with torch.no_grad():
                    row.ms = timer(lambda: fn(**inputs))
            else:
                grad_inputs = {k: (v.detach().requires_grad_(k in op.grad_inputs) if isinstance(v, torch.Tensor) else v)
                               for k, v in inputs.items()}
                outs = _as_tuple(fn(**grad_inputs))
                grads = [torch.randn(o.shape, generator=gen, device=device, dtype=o.dtype) for o in outs]
                leaves = [grad_inputs[k] for k in op.grad_inputs]

                def fwd_bwd():
                    torch.autograd.backward(_as_tuple(fn(**grad_inputs)), grads)

                def reset():
                    for leaf in leaves:
                        leaf.grad = None
                row.ms = timer(fwd_bwd, reset=reset)
        except Exception as e:  # report and keep benchmarking the other backends
            row.status = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
            continue
        row.gbps = nbytes / (row.ms * 1e-3) / 1e9
        row.pct_of_copy = 100 * row.gbps / copy_gbps
    by_backend = {r.backend: r for r in rows if r.ms is not None}
    for row in rows:
        if row.ms is None:
            continue
        if "eager" in by_backend:
            row.speedup_vs_eager = by_backend["eager"].ms / row.ms
        if "compile" in by_backend:
            row.speedup_vs_compile = by_backend["compile"].ms / row.ms
    return rows


# ---- reporting ------------------------------------------------------------------------------------

def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


COLUMNS = ("op", "mode", "dtype", "shape", "backend", "ms", "GB/s", "% copy", "x eager", "x compile", "status")


def _cells(row: Row):
    return (row.op, row.mode, row.dtype, f"{row.shape_name} {row.shape}", row.backend, _fmt(row.ms, ".4f"),
            _fmt(row.gbps, ".0f"), _fmt(row.pct_of_copy, ".1f"), _fmt(row.speedup_vs_eager, ".2f"),
            _fmt(row.speedup_vs_compile, ".2f"), row.status)


def print_rows(rows):
    widths = (20, 7, 5, 28, 8, 9, 6, 6, 7, 9, 0)
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(_cells(row), widths)).rstrip(), flush=True)


def markdown(meta: dict, rows) -> str:
    lines = [f"# fastformer op benchmark: {meta['device']}", "",
             f"{meta['timestamp']} | torch {meta['torch']} | triton {meta['triton']} | CUDA {meta['cuda']} | "
             f"git {meta['git_sha']}", "",
             f"Device-to-device copy: {meta['copy_gbps']:.0f} GB/s (bytes read + written, "
             f"{meta['copy_bytes'] >> 20} MiB copied). GB/s counts the bytes the ideal fused op reads and writes; "
             "x eager / x compile are speedups (their time / this time).", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(c) for c in _cells(row)) + " |" for row in rows]
    lines += ["", "Not measured:"] + [f"- {reason} ({len(cases)} cases)" for reason, cases in meta["skipped"].items()]
    return "\n".join(lines) + "\n"


def _metadata(device: torch.device) -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001 - a broken triton is reported, not fatal
        triton_version = f"unavailable ({type(e).__name__})"
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor()})",
        "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda, "python": platform.python_version(),
        "git_sha": git_sha(), "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "available_backends": ff.available_backends(),
    }


def write_results(out: Path, meta: dict, rows):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**meta, "rows": [asdict(r) for r in rows]}, indent=1, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(meta, rows))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="JSON results path (a .md table is written next to it)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, few reps: checks the harness itself")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS), help=f"comma-separated subset of {','.join(ALL_BACKENDS)}")
    p.add_argument("--dtypes", default="fp16,bf16", help=f"comma-separated subset of {','.join(DTYPES)}")
    p.add_argument("--modes", default="fwd,fwd+bwd", help="comma-separated subset of fwd,fwd+bwd")
    p.add_argument("--shapes", default=None, help=f"comma-separated subset of {','.join(FULL_SHAPES)} (default all)")
    p.add_argument("--compile-shapes", default=",".join(DEFAULT_COMPILE_SHAPES),
                   help="shapes at which torch.compile is measured ('all' for every shape)")
    p.add_argument("--target-ms", type=float, default=None, help="measured time per case and backend (default 60; smoke 5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name, allowed in (("ops", OPS), ("backends", ALL_BACKENDS), ("dtypes", DTYPES), ("modes", ("fwd", "fwd+bwd"))):
        chosen = getattr(args, name).split(",")
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            p.error(f"--{name}: unknown {unknown}; choose from {list(allowed)}")
        setattr(args, name, chosen)
    shapes = SMOKE_SHAPES if args.smoke else FULL_SHAPES
    if args.shapes is not None:
        unknown = [s for s in args.shapes.split(",") if s not in shapes]
        if unknown:
            p.error(f"--shapes: unknown {unknown}; choose from {list(shapes)}")
        shapes = {s: shapes[s] for s in args.shapes.split(",")}
    args.shape_map = shapes
    args.compile_shapes = None if args.compile_shapes == "all" else args.compile_shapes.split(",")
    if args.target_ms is None:
        args.target_ms = 5.0 if args.smoke else 60.0
    return args


def benchmark_cases(args):
    """(op, mode, dtype, shape name, shape, compile shapes) to measure. dtype and mode are outermost:
    a run cut off by a time limit has measured every op in the first ones."""
    for dtype_name in args.dtypes:
        for mode in args.modes:
            for op_name in args.ops:
                shapes = dict(args.shape_map)
                if op_name.startswith("softmax") and not args.smoke:
                    shapes = {SOFTMAX_ATTENTION_SHAPE[0]: SOFTMAX_ATTENTION_SHAPE[1], **shapes}
                compile_shapes = args.compile_shapes if args.compile_shapes is not None else shapes
                for shape_name, shape in shapes.items():
                    yield OPS[op_name], mode, dtype_name, shape_name, shape, compile_shapes


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    started = time.perf_counter()
    if device.type != "cuda":
        print("No CUDA device: GPU backends are unavailable here; timing only what runs on CPU "
              "(use --smoke for a quick check of the harness).")
    for backend in GPU_BACKENDS:
        reason = _backends.why_not(backend, device)
        if reason is not None:
            print(f"backend {backend!r} unavailable: {reason}")
    timer = Timer(device, args.target_ms, max_reps=20 if args.smoke else 500)
    copy_bytes = (64 << 20) if args.smoke or device.type != "cuda" else (1 << 30)
    meta = _metadata(device)
    meta["copy_bytes"] = copy_bytes
    meta["copy_gbps"] = copy_bandwidth_gbps(timer, device, copy_bytes)
    meta["args"] = {k: (v if not isinstance(v, Path) else str(v)) for k, v in vars(args).items() if k != "shape_map"}
    print(f"{meta['device']} | torch {meta['torch']} | triton {meta['triton']} | CUDA {meta['cuda']} | git {meta['git_sha']}")
    print(f"device-to-device copy: {meta['copy_gbps']:.0f} GB/s (read + written, {copy_bytes >> 20} MiB)")
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, (20, 7, 5, 28, 8, 9, 6, 6, 7, 9, 0))).rstrip())

    rows = []
    skipped = meta["skipped"] = {}  # "backend: reason" -> the cases it applies to
    for op, mode, dtype_name, shape_name, shape, compile_shapes in benchmark_cases(args):
        case_rows = run_case(op, mode, dtype_name, shape_name, shape, args.backends, compile_shapes, timer,
                             meta["copy_gbps"], device, args.seed)
        for row in case_rows:  # listed once at the end, not per row
            if row.status.startswith("unavailable: "):
                skipped.setdefault(f"{row.backend}: {row.status[len('unavailable: '):]}", []).append(
                    f"{row.op} {row.mode} {row.dtype} {row.shape_name}")
        case_rows = [r for r in case_rows if not r.status.startswith("unavailable: ")]
        print_rows(case_rows)
        rows += case_rows
        if args.out:
            meta["elapsed_s"] = round(time.perf_counter() - started, 1)
            write_results(args.out, meta, rows)
    elapsed = time.perf_counter() - started
    wrong = [r for r in rows if r.status == "wrong" or r.status.startswith("error")]
    for reason, cases in skipped.items():
        print(f"not measured ({len(cases)} cases): {reason}")
    print(f"{len(rows)} rows in {elapsed:.0f} s; {len(wrong)} wrong or failed" + (f"; results in {args.out}" if args.out else ""))
    for r in wrong:
        print(f"  {r.op} {r.mode} {r.dtype} {r.shape_name} {r.backend}: {r.status} (max abs err {r.max_abs_err})")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
