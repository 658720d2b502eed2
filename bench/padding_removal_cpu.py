"""Padding removal, before and after, in one run: the same fastformer encoder on the same padded batch with
pack=False (every padded position computed, as before padding removal) and pack=True (the default: the
real tokens only), interleaved, medians. Also the unpadded batch with and without its all-ones mask, which
must cost the same (the packing check is the only extra work there).

Workloads (issue 12's padded rows; weights do not change latency):
  bert-base    BERT-base shape (random weights), batch 8, lengths 16..128 evenly spaced (56% real)
  minilm-real  the real all-MiniLM-L6-v2 on the first 32 sentences of fastformer/modelbench/sentences.txt,
               tokenized as they are and padded to the longest

  python bench/padding_removal_cpu.py --threads 2 [--reps 15] [--json PATH]
"""
import argparse
import os
import statistics
import tempfile
import time

import torch

import fastformer as ff
from fastformer.modelbench import inputs, machine, models, report


def bert_base_batch(tmp: str):
    transformers = models.import_transformers()
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig()).save_pretrained(f"{tmp}/bert-base")
    mask = inputs.spread_mask(8, 128)  # [8, 128]: lengths 16, 32, ..., 128, as `fastformer bench --lengths spread`
    ids = torch.randint(1000, 20000, (8, 128)).masked_fill(mask == 0, 0)
    return ff.from_pretrained(f"{tmp}/bert-base"), ids, mask


def minilm_batch():
    transformers = models.import_transformers()
    path = models.default_model_path()
    tokens = transformers.AutoTokenizer.from_pretrained(path)(inputs.sentences()[:32], padding=True,
                                                               return_tensors="pt")
    return ff.from_pretrained(path), tokens["input_ids"], tokens["attention_mask"]


def interleaved_medians(runners: dict, reps: int) -> dict:
    samples = {name: [] for name in runners}
    for _ in range(reps):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) * 1e3 for name, times in samples.items()}


def bench_workload(model, ids, mask, reps: int) -> dict:
    encoder = getattr(model, "encoder", model)  # a task model's body, or the bare encoder
    full_ids = ids[mask.sum(1).argmax()].expand_as(ids).contiguous()  # the longest row B times: no padding
    full_mask = torch.ones_like(mask)

    def run(*args, **kwargs):
        return lambda: encoder(*args, **kwargs)

    with torch.inference_mode():
        runners = {"padded, pack=False (before)": run(ids, mask, pack=False),
                   "padded, packed (after)": run(ids, mask),
                   "unpadded, no mask": run(full_ids),
                   "unpadded, all-ones mask": run(full_ids, full_mask)}
        for fn in runners.values():  # warm-up: oneDNN prepacking, first-call allocations
            fn()
        ms = interleaved_medians(runners, reps)
        packed, dense = encoder(ids, mask), encoder(ids, mask, pack=False)
        real = mask.bool()
        max_rel = float((packed[real] - dense[real]).abs().max() / dense[real].abs().max())
    return {"batch": list(ids.shape), "real_tokens": int(mask.sum()), "padded_tokens": int(mask.numel()),
            "median_ms": ms, "speedup_padded": ms["padded, pack=False (before)"] / ms["padded, packed (after)"],
            "unpadded_mask_overhead": ms["unpadded, all-ones mask"] / ms["unpadded, no mask"] - 1.0,
            "max_rel_diff_packed_vs_dense": max_rel}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if args.json:
        report.check_writable(args.json, "--json")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("bert-base", lambda: bert_base_batch(tmp)), ("minilm-real", minilm_batch)):
            results[name] = bench_workload(*make(), args.reps)
            r = results[name]
            print(f"{name}: {r['real_tokens']}/{r['padded_tokens']} real tokens; "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in r["median_ms"].items())
                  + f"; padded speed-up {r['speedup_padded']:.2f}x, all-ones-mask overhead "
                  f"{100 * r['unpadded_mask_overhead']:+.1f}%, max rel diff {r['max_rel_diff_packed_vs_dense']:.1e}")
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"load average (1, 5, 15 min) before {load['before']}, after {load['after']}; threads {args.threads}; "
          f"cpu_isa {machine.describe().get('cpu_isa_detected')}")
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "padding-removal-cpu",
                                    "settings": {"threads": args.threads, "reps": args.reps}, "load_average": load},
                           "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
