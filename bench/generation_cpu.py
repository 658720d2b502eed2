"""Greedy decoding: fastformer generate vs Hugging Face generate on GPT-2-small (random weights, the
default GPT2Config: 12 layers, 768 hidden), same prompt, interleaved in one run, medians. Prints
tokens/s (new tokens over the whole call, prefill included) and ms/token (the decode steps alone:
(time for N new tokens - time for 1) / (N - 1)), and whether both produced the same tokens.

  python bench/generation_cpu.py --threads 2 [--prompt 32] [--new 64] [--batch 1] [--reps 5]
  python bench/generation_cpu.py --device cuda   # fp16 on a GPU

Latency does not depend on weight values; no EOS is set, so every call makes exactly --new tokens.
"""
import argparse
import statistics
import tempfile
import time

import torch

import fastformer as ff


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
    """Median seconds of each runner over reps rounds, every round running each runner once in turn."""
    samples = {k: [] for k in runners}
    for _ in range(reps):
        for k, fn in runners.items():
            samples[k].append(_timed(fn, device))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench(path, batch, prompt_len, new_tokens, reps, device, dtype):
    import transformers

    hf = transformers.GPT2LMHeadModel.from_pretrained(path, dtype=dtype).to(device).eval()
    hf.generation_config.eos_token_id = None  # every call makes exactly new_tokens tokens
    native = ff.from_pretrained(path, task="causal-lm", dtype=dtype, device=device)
    ids = torch.randint(1000, 2000, (batch, prompt_len), device=device)
    mask = torch.ones_like(ids)

    def runner(name, n):
        if name == "hf":
            return lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                       pad_token_id=0)
        return lambda: native.generate(ids, attention_mask=mask, max_new_tokens=n, eos_token_id=None)

    runners = {(name, n): runner(name, n) for name in ("hf", "fastformer") for n in (1, new_tokens)}
    with torch.inference_mode():
        same = torch.equal(runners["hf", new_tokens](), runners["fastformer", new_tokens]())
        for fn in runners.values():  # warm-up: oneDNN weight packing, allocator, CUDA kernels
            fn()
        med = interleaved_medians(runners, reps, device)
    print(f"\nGPT-2-small greedy, batch {batch}, {prompt_len}-token prompt, {new_tokens} new tokens, {dtype}, "
          f"{device.type}, {torch.get_num_threads()} threads, {reps} interleaved reps (medians); same tokens: {same}")
    results = {}
    for name in ("hf", "fastformer"):
        total, first = med[name, new_tokens], med[name, 1]
        results[name] = (batch * new_tokens / total, (total - first) / (new_tokens - 1) * 1e3)
    for name, (tps, ms) in results.items():
        print(f"  {name:<11} {tps:8.1f} tokens/s  x{tps / results['hf'][0]:5.2f}    {ms:7.2f} ms/token decode  "
              f"x{results['hf'][1] / ms:5.2f}")
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.new < 2:
        parser.error("--new must be at least 2 (ms/token compares N new tokens with 1)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        bench(_gpt2_small_path(tmp), args.batch, args.prompt, args.new, args.reps, device, dtype)


if __name__ == "__main__":
    main()
