"""Where a GPT-2-small batch-1 decode step's time goes on the CPU (fp32, random weights, the default GPT2Config):
timings of one step at `--cached` tokens in the KV cache, interleaved round by round, medians:

  step                 model.step on one token, its blocks through the fused decode op (ff.ops.decode_block,
                       as the model runs them): what bench/generation_cpu.py's ms/token measures, less the
                       generation loop (argmax, ~0.05 ms)
  step_python_blocks   the same step with every block run by its Python modules (the path before the fused op)
  weights              the step's 49 single-row products alone (48 layer matrices + the tied LM head, 498 MB),
                       back to back through torch.ops.fastformer.gemv: streaming the weights, and its GB/s
  other_work_python    step_python_blocks with the gemv kernel replaced by a preallocated output: attention,
                       norms, activations, KV-cache writes, op wrappers and Python, with the caches warm (the fused
                       op calls the kernel from C++, where it cannot be replaced)
  rest                 step - weights, and step_python_blocks - weights: everything but the weight stream,
                       including what running it beside the stream adds (measured on the 2-core dev VM, 1 thread:
                       a 768-float add takes ~16 us right after a 37.7 MB gemv vs ~1.2 us warm) and thread hand-offs

  python bench/decode_split_cpu.py --threads 2 [--cached 64] [--reps 9] [--steps 20] [--json PATH]
"""
import argparse
import contextlib
import importlib
import os
import statistics
import tempfile
import time
import types

import torch
from generation_cpu import _gpt2_small_path, write_json  # bench/ is the script's folder, so on sys.path

import fastformer as ff
from fastformer.models import decoder

_gemv_module = importlib.import_module("fastformer.ops.gemv")


@contextlib.contextmanager
def python_blocks():
    """Decode steps run every block through its Python modules instead of the fused decode op."""
    real = decoder.Decoder._decodes_one_token
    decoder.Decoder._decodes_one_token = lambda self, x, cache: False
    try:
        yield
    finally:
        decoder.Decoder._decodes_one_token = real


@contextlib.contextmanager
def gemv_kernel_stubbed():
    """Every fastformer gemv call returns a preallocated zero output of its size, with no weight read."""
    outputs = {}

    def stub(x, weight, bias):
        rows = weight.shape[0]
        if rows not in outputs:
            outputs[rows] = x.new_zeros(rows)
        return outputs[rows]

    real = _gemv_module._ops
    _gemv_module._ops = types.SimpleNamespace(gemv=types.SimpleNamespace(default=stub))
    try:
        yield
    finally:
        _gemv_module._ops = real


def bench(path: str, cached: int, reps: int, steps: int) -> dict:
    model = ff.from_pretrained(path, task="causal-lm", dtype=torch.float32, device="cpu")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    weight_bytes = sum(m.weight.numel() * m.weight.element_size() for m in linears)
    rows = [torch.randn(m.in_features) for m in linears]
    gemv = torch.ops.fastformer.gemv.default
    token = torch.tensor([[1500]])
    with torch.inference_mode():
        cache = model.new_cache(1, cached + 1)
        model.step(torch.randint(1000, 2000, (1, cached)), cache)

        def step():  # one token after `cached` ones, then the cache is rewound to `cached`
            model.step(token, cache, last_only=True)
            cache.length -= 1
            cache.positions -= 1

        def weights():
            for m, x in zip(linears, rows):
                gemv(x, m.weight, m.bias)

        def step_python_blocks():
            with python_blocks():
                step()

        def other_work_python():
            with python_blocks(), gemv_kernel_stubbed():
                step()

        runners = {"step": step, "step_python_blocks": step_python_blocks, "weights": weights,
                   "other_work_python": other_work_python}
        for fn in runners.values():  # warm-up
            fn()
        samples = {name: [] for name in runners}
        for _ in range(reps):
            for name, fn in runners.items():
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                samples[name].append((time.perf_counter() - t0) / steps * 1e3)
    ms = {name: statistics.median(v) for name, v in samples.items()}
    ms["rest"] = ms["step"] - ms["weights"]
    ms["rest_python_blocks"] = ms["step_python_blocks"] - ms["weights"]
    print(f"\nGPT-2-small decode step, batch 1, {cached} cached tokens, fp32, {torch.get_num_threads()} threads, "
          f"{reps} interleaved rounds of {steps} (medians), ms per token:")
    for name in ("step", "step_python_blocks", "weights", "other_work_python", "rest", "rest_python_blocks"):
        extra = f"  ({weight_bytes / (ms['weights'] / 1e3) / 1e9:.1f} GB/s)" if name == "weights" else ""
        print(f"  {name:<20} {ms[name]:7.2f}{extra}")
    return {"ms_per_token": ms, "weight_bytes": weight_bytes,
            "weights_GBps": weight_bytes / (ms["weights"] / 1e3) / 1e9, "samples_ms": samples}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cached", type=int, default=64, help="tokens in the KV cache (default 64: the middle "
                        "of generation_cpu.py's 32-token prompt + 64 new tokens)")
    parser.add_argument("--reps", type=int, default=9, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="calls per round of each timing")
    parser.add_argument("--json", metavar="PATH", help="also write the results, machine and versions as JSON")
    args = parser.parse_args()
    if not 1 <= args.cached < 1024:
        parser.error("--cached must be in [1, 1023] (GPT-2's 1024 positions)")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        results = bench(_gpt2_small_path(tmp), args.cached, args.reps, args.steps)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        settings = {"model": "GPT-2-small, random weights", "batch": 1, "cached_tokens": args.cached,
                    "threads": args.threads, "reps": args.reps, "steps": args.steps, "load_average": load}
        write_json(args.json, "gpt2-decode-split", settings, results)


if __name__ == "__main__":
    main()
