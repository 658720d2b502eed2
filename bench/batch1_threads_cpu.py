"""Batch-1 latency (issue 12 item 2) against the OpenMP settings that decide thread wake-up cost.

At batch 1 x 128 the small model's matmuls are short (all-MiniLM-L6-v2: 2.7 GFLOP per forward, 40 ms at
2 threads on the quiet 2-core dev VM = 68 GFLOP/s, about 18% of the two cores' fp32 peak), so the time
each parallel region spends waking its worker is a large share. torch's CPU wheel uses GNU libgomp, which
reads its wait policy once at load time; so every setting runs in its own process:
  threads 1 and 2, OMP_WAIT_POLICY unset (libgomp spins briefly, then sleeps), PASSIVE (sleeps at once)
  and ACTIVE (spins: what ONNX Runtime's own thread pool does by default; ORT with spinning off took
  35 ms instead of 20 on MiniLM here).
Spinning only pays on an otherwise idle machine: on a shared one it takes cores from other processes.

Workloads: the real all-MiniLM-L6-v2 and BERT-base's shape (random weights), batch 1 x 128, no padding.

  python bench/batch1_threads_cpu.py [--reps 15] [--json PATH]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SETTINGS = [(threads, policy) for threads in (1, 2) for policy in (None, "PASSIVE", "ACTIVE")]
WORKER_TIMEOUT_S = 600


def worker(bert_path: str, reps: int, threads: int) -> dict:
    import torch

    import fastformer as ff
    from fastformer.modelbench import models

    torch.set_num_threads(threads)
    ids = torch.randint(1000, 20000, (1, 128))  # [1, 128]
    result = {}
    for name, path in (("minilm", models.default_model_path()), ("bert-base", bert_path)):
        model = ff.from_pretrained(path).eval()
        with torch.inference_mode():
            for _ in range(3):  # warm-up: oneDNN prepacking, first-call allocations
                model(ids)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                model(ids)
                times.append((time.perf_counter() - start) * 1e3)
        result[name] = {"median_ms": statistics.median(times), "min_ms": min(times)}
    return result


def run_setting(bert_path: str, reps: int, threads: int, policy: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env["OMP_NUM_THREADS"] = str(threads)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--worker", bert_path, "--reps", str(reps),
                          "--threads", str(threads)], env=env, capture_output=True, text=True, check=True,
                         timeout=WORKER_TIMEOUT_S)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", metavar="BERT_PATH", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.reps, args.threads)))
        return
    from fastformer.modelbench import machine, models, report

    if args.json:
        report.check_writable(args.json, "--json")
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        transformers = models.import_transformers()
        transformers.BertModel(transformers.BertConfig()).save_pretrained(f"{tmp}/bert-base")
        for threads, policy in SETTINGS:
            key = f"threads={threads} OMP_WAIT_POLICY={policy or 'unset'}"
            results[key] = run_setting(f"{tmp}/bert-base", args.reps, threads, policy)
            print(key + ": " + ", ".join(f"{name} median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f})"
                                         for name, r in results[key].items()), flush=True)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "batch1-threads-cpu",
                                    "settings": {"reps": args.reps}, "load_average": load},
                           "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
