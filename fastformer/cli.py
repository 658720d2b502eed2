"""The `fastformer` command. `fastformer bench` times the fused ops against the PyTorch expressions
they replace on this machine (kernel mode; model benchmarks arrive with the native models)."""
import argparse
import json
import platform
import subprocess
import sys

import torch


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=__file__.rsplit("/", 2)[0]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _bench(args) -> int:
    from fastformer import _backends, opbench

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    if device == "cpu" and dtype == torch.float16:
        print("fp16 is not a CPU target; use float32 or bfloat16", file=sys.stderr)
        return 2
    print(f"fastformer bench --ops: device={device} dtype={args.dtype} threads={torch.get_num_threads()} "
          f"reps={args.reps} (medians, ours and PyTorch interleaved in the same run)")

    def progress(i, n, case):
        print(f"\r[{i + 1}/{n}] {case.name} {'x'.join(map(str, case.shape))}".ljust(60), end="", file=sys.stderr,
              flush=True)

    rows = opbench.run(dtype=dtype, device=device, backend=args.backend, reps=args.reps, progress=progress)
    print("\r".ljust(61), end="\r", file=sys.stderr)
    print(opbench.format_table(rows))
    if args.json:
        meta = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(),
                "torch": torch.__version__, "python": platform.python_version(), "git_sha": _git_sha(),
                "threads": torch.get_num_threads(), "backends": _backends.available_backends()}
        if device == "cuda":
            meta["gpu"] = torch.cuda.get_device_name()
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fastformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="benchmark fastformer against PyTorch on this machine")
    bench.add_argument("--ops", action="store_true", help="kernel mode: each op vs its unfused PyTorch expression "
                       "(the only mode until the native models land)")
    bench.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if present, else cpu")
    bench.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    bench.add_argument("--backend", choices=["cpu", "cuda", "triton", "reference"], default=None,
                       help="force one fastformer backend (default: auto)")
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    bench.add_argument("--reps", type=int, default=50, help="timed repetitions per op (default 50)")
    bench.add_argument("--json", metavar="PATH", help="also write results and machine facts as JSON")
    args = parser.parse_args(argv)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
