"""Greedy decoding: fastformer generate vs Hugging Face generate and, on the CPU, CTranslate2's Generator
(float32, and int8 as a row labelled quantized) on GPT-2-small (random weights, the default GPT2Config:
12 layers, 768 hidden), same prompt, interleaved in one run, medians. Prints tokens/s (new tokens over
the whole call, prefill included) and ms/token (the decode steps alone: (time for N new tokens - time
for 1) / (N - 1)), whether each produced Hugging Face's tokens, and the weight bandwidth of a decode
step (every parameter is read once per token: parameter bytes / ms per token; fp32 GPT-2-small: 498 MB)
beside the machine's copy bandwidth measured in the same run (opbench.machine_limits, as
`fastformer bench --ops`).

  python bench/generation_cpu.py --threads 2 [--prompt 32] [--new 64] [--batch 1] [--reps 5] [--json PATH]
  python bench/generation_cpu.py --device cuda   # fp16 on a GPU

Latency does not depend on weight values; no EOS is set, so every call makes exactly --new tokens.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

import fastformer as ff
from fastformer import opbench
from fastformer.modelbench import ctranslate2_runtime, machine, report, timing


def _gpt2_small_path(tmp):
    import transformers

    torch.manual_seed(0)
    path = f"{tmp}/gpt2-small-random"
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(path)
    return path


def _timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved_medians(runners: dict, reps: int, device) -> dict:
    """Median seconds of each runner over reps rounds, every round running each runner once in turn. On the CPU the
    process then waits until its threads are idle (timing.wait_until_idle): torch's and CTranslate2's OpenMP threads
    spin a while after a call and would take the cores from the next runner."""
    samples = {k: [] for k in runners}
    for _ in range(reps):
        for k, fn in runners.items():
            samples[k].append(_timed(fn, device))
            if device.type == "cpu":
                timing.wait_until_idle()
    return {k: statistics.median(v) for k, v in samples.items()}


def write_json(path: str, benchmark: str, settings: dict, results: dict) -> None:
    """Results with the machine, library versions and git sha they were measured with."""
    report.write_json({"meta": {**machine.describe(), "benchmark": benchmark, "settings": settings},
                       "results": results}, path)
    print(f"wrote {path}")


def _ctranslate2_runners(path, threads) -> tuple[dict, dict]:
    """(name -> runner(ids, new_tokens)) for CTranslate2 float32 and int8, and (name -> why not) for those
    that cannot run here."""
    try:
        folder = ctranslate2_runtime.converted_folder(path, "gpt2-small-random")
    except ImportError:
        return {}, {name: "ctranslate2 is not installed" for name in CT2_ROWS}
    return {name: ctranslate2_runtime.generator_runner(folder, compute_type, threads)
            for name, compute_type in CT2_ROWS.items()}, {}


CT2_ROWS = {"ctranslate2": "float32", "ctranslate2-int8": "int8"}


def bench(path, batch, prompt_len, new_tokens, reps, device, dtype):
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(path, dtype=dtype).to(device).eval()
    hf.generation_config.eos_token_id = None  # every call makes exactly new_tokens tokens
    native = ff.from_pretrained(path, task="causal-lm", dtype=dtype, device=device)
    weight_bytes = sum(p.numel() * p.element_size() for p in native.parameters())
    ids = torch.randint(1000, 2000, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)
    ct2, skipped = _ctranslate2_runners(path, torch.get_num_threads()) if device.type == "cpu" else ({}, {})

    def runner(name, n):
        if name == "hf":
            return lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=0)[:, prompt_len:]
        if name in ct2:
            return lambda: ct2[name](ids, n)
        return lambda: native.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None)[:, prompt_len:]

    names = ["hf", "fastformer", *ct2]
    runners = {(name, n): runner(name, n) for name in names for n in (1, new_tokens)}
    with torch.inference_mode():
        reference = runners["hf", new_tokens]().cpu()
        same = {name: torch.equal(runners[name, new_tokens]().cpu(), reference) for name in names}
        for fn in runners.values():  # warm-up: oneDNN weight packing, allocator, CUDA kernels
            fn()
        med = interleaved_medians(runners, reps, device)
    limits = opbench.machine_limits(device=device)
    print(f"\nGPT-2-small greedy, batch {batch}, {prompt_len}-token prompt, {new_tokens} new tokens, {dtype}, "
          f"{device.type}, {torch.get_num_threads()} threads, {reps} interleaved reps (medians); "
          f"machine copy bandwidth {limits['copy_GBps']:.1f} GB/s (read + written)")
    results = {}
    for name in names:
        total, first = med[name, new_tokens], med[name, 1]
        ms_per_token = (total - first) / (new_tokens - 1) * 1e3
        results[name] = {"tokens_per_s": batch * new_tokens / total, "ms_per_token": ms_per_token,
                         "same_tokens_as_hf": same[name], "quantized": name == "ctranslate2-int8"}
        if name in ("hf", "fastformer"):  # fp32 weights, every one read once per step
            results[name]["weight_GBps"] = weight_bytes / (ms_per_token / 1e3) / 1e9
    results["machine"] = {**limits, "fastformer_weight_bytes": weight_bytes}
    results["skipped"] = skipped
    hf = results["hf"]
    for name in names:
        r = results[name]
        streamed = f"  weights {r['weight_GBps']:5.1f} GB/s" if "weight_GBps" in r else ""
        print(f"  {name:<17} {r['tokens_per_s']:8.1f} tokens/s  x{r['tokens_per_s'] / hf['tokens_per_s']:5.2f}    "
              f"{r['ms_per_token']:7.2f} ms/token decode  x{hf['ms_per_token'] / r['ms_per_token']:5.2f}{streamed}"
              f"  same tokens as hf: {r['same_tokens_as_hf']}" + ("  quantized" if r["quantized"] else ""))
    for name, why in skipped.items():
        print(f"  {name:<17} skipped: {why}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the results, machine and versions as JSON")
    args = parser.parse_args()
    if args.new < 2:
        parser.error("--new must be at least 2 (ms/token compares N new tokens with 1)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(_gpt2_small_path(tmp), args.batch, args.prompt, args.new, args.reps, device, dtype)
    load = {"before": load_before, "after": os.getloadavg()}  # 1, 5, 15 min; our own threads count in it
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        settings = {"model": "GPT-2-small, random weights", "decoding": "greedy", "batch": args.batch,
                    "prompt_tokens": args.prompt, "new_tokens": args.new, "reps": args.reps, "device": args.device,
                    "dtype": str(dtype).removeprefix("torch."),
                    "tokens_per_s": "new tokens / whole call (prefill included)",
                    "ms_per_token": "decode steps alone: (time for N new tokens - time for 1) / (N - 1)",
                    "load_average": load}
        write_json(args.json, "gpt2-greedy-decode", settings, results)


if __name__ == "__main__":
    main()
