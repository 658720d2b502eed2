"""Where a batch-1 encoder forward's time goes (issue 12 item 2): the real all-MiniLM-L6-v2 on one real
sentence (18 tokens, what `fastformer bench --batch 1` times) and on 128 tokens, as the harness calls it
(input_ids + attention_mask, torch.inference_mode).

Per shape: the forward's median and min wall time, then the ops' own time per forward from a profiled run:
the 24 linears (oneDNN), attention, norms, the other ATen ops, and the rest (median minus the ops: Python and
dispatch between them; approximate, as the two runs see different load). A forward of the same 6-layer model shrunk to hidden 32 ("overhead" rows) does almost no
arithmetic: its time is the per-forward cost of our Python and op calls alone.

Measured 2026-12-04 on the 2-core AVX-512 VM, 1 thread, load 3-7 (other jobs running: ratios only): the tiny
model's forward took 1.68-1.72 ms (min over 150 calls, 5 processes) before commit 878c469 and 1.48-1.51 ms after.

  python bench/batch1_profile_cpu.py [--threads 2] [--reps 50] [--json PATH]
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fastformer as ff
from fastformer.modelbench import inputs, machine, models, report

# Profiler event names -> the row they are counted in; everything else that is an ATen op is "other ops".
GROUPS = {"mkldnn::_linear_pointwise": "linears", "fastformer::gemv": "linears",
          "fastformer::attention_fwd": "attention", "fastformer::layer_norm_fwd": "norms"}


def _time_forward(model, model_inputs: dict, reps: int) -> dict:
    for _ in range(5):  # warm-up: oneDNN packs the weights on the first call
        model(**model_inputs)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        model(**model_inputs)
        times.append(time.perf_counter() - start)
    return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3}


def _profile_forward(model, model_inputs: dict, calls: int = 20) -> dict:
    """Milliseconds per forward of the ops' own time in each GROUPS row and in the other ATen ops."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            model(**model_inputs)
    split = {"linears": 0.0, "attention": 0.0, "norms": 0.0, "other ops": 0.0}
    for event in prof.key_averages():
        split[GROUPS.get(event.key, "other ops")] += event.self_cpu_time_total / 1e3 / calls
    return split


def _shrunk_copy(path: str, folder: str) -> str:
    """The checkpoint's architecture with hidden 32 (2 heads, FFN 64), random weights, saved in folder."""
    transformers = models.import_transformers()
    config = transformers.AutoConfig.from_pretrained(path)
    config.update({"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64})
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reps", type=int, default=50, help="timed forwards per shape (default 50)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if args.json:
        report.check_writable(args.json, "--json")
    torch.set_num_threads(args.threads)
    source = models.resolve(None, tempfile.gettempdir())
    tokenizer, why_not = inputs.load_tokenizer(source)
    if tokenizer is None:
        raise SystemExit(f"all-MiniLM-L6-v2's tokenizer is needed: {why_not}")
    shapes = {"18 tokens (one real sentence)": inputs.make_inputs(source, tokenizer, 1, 128, "cpu", "real"),
              "128 tokens": inputs.make_inputs(source, tokenizer, 1, 128, "cpu", "fixed")}
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        for label, model_path in (("all-MiniLM-L6-v2", source.path),
                                 ("overhead (hidden 32)", _shrunk_copy(source.path, tmp))):
            model = ff.from_pretrained(model_path, task="base")
            for shape, model_inputs in shapes.items():
                key = f"{label}, {shape}"
                timed, ops = _time_forward(model, model_inputs, args.reps), _profile_forward(model, model_inputs)
                # The profiler inflates Python time several-fold, so the rest is taken from the unprofiled median.
                results[key] = {**timed, **ops, "rest (median - ops)": timed["median_ms"] - sum(ops.values())}
                print(key + ": " + ", ".join(f"{k} {v:.2f}" for k, v in results[key].items()), flush=True)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"threads {args.threads}; load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "batch1-profile-cpu",
                                    "settings": {"threads": args.threads, "reps": args.reps}, "load_average": load,
                                    "units": "ms per forward"},
                           "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
