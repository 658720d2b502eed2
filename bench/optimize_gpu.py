"""ff.optimize on a GPU: Hugging Face BERT-base (batch 32 x 128) and GPT-2 prefill (batch 8 x 512), fp16, random
weights, the optimized model vs the same model with attn_implementation="sdpa" (issue #6's target: >= 1.3x).
Interleaved reps, CUDA-event timing, medians; prints max |diff| of the outputs.

  python bench/optimize_gpu.py [--reps 30] [--out results.json]
"""
import argparse
import copy
import json
import statistics

import torch

import fastformer as ff

CASES = {
    "bert-base 32x128": ("BertModel", "BertConfig", 32, 128),
    "gpt2 prefill 8x512": ("GPT2Model", "GPT2Config", 8, 512),
}


def _time_ms(fn) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end)


def bench_case(name, model_class, config_class, batch, seq, reps):
    import transformers

    torch.manual_seed(0)
    config = getattr(transformers, config_class)()  # the defaults are BERT-base and GPT-2 small
    sdpa = getattr(transformers, model_class)(config, attn_implementation="sdpa").eval().to("cuda", torch.float16)
    optimized = ff.optimize(copy.deepcopy(sdpa))
    ids = torch.randint(1000, 2000, (batch, seq), device="cuda")
    mask = torch.ones(batch, seq, dtype=torch.long, device="cuda")
    runners = {name_: (lambda m=m: m(input_ids=ids, attention_mask=mask).last_hidden_state)
               for name_, m in (("hf-sdpa", sdpa), ("ff.optimize", optimized))}
    with torch.inference_mode():
        diff = (runners["ff.optimize"]() - runners["hf-sdpa"]()).abs().max().item()
        for _ in range(5):
            for fn in runners.values():
                fn()
        samples = {k: [] for k in runners}
        for _ in range(reps):
            for k, fn in runners.items():
                samples[k].append(_time_ms(fn))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    speedup = medians["hf-sdpa"] / medians["ff.optimize"]
    print(f"{name}: hf-sdpa {medians['hf-sdpa']:.2f} ms, ff.optimize {medians['ff.optimize']:.2f} ms, "
          f"x{speedup:.2f}, max|diff| {diff:.1e}, report {ff.optimization_report(optimized)}")
    return {"case": name, "median_ms": medians, "speedup_vs_sdpa": speedup, "max_abs_diff": diff}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    results = [bench_case(name, *case, args.reps) for name, case in CASES.items()]
    if args.out:
        meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
