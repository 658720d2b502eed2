"""Padding removal through ff.optimize, before and after, in one process: two copies of the same transformers model
(random weights), one optimized with pack_padding=False (every padded position computed, as before) and one with
the default (the encoder on the real tokens only), run interleaved on one padded batch, medians of the pairs.

Batch: 8 rows, lengths 16, 32, ..., 128 right-padded to 128 (56% real), as `fastformer bench --lengths spread`.
Workloads (shapes of real checkpoints):
  distilbert-cls  DistilBertForSequenceClassification, distilbert-base shape (768 wide, 6 layers): forward
  t5-small        T5ForConditionalGeneration, t5-small shape (512 wide, 6 + 6 layers, 8 heads)
  bart-small      BartForConditionalGeneration, 512 wide, 6 + 6 layers, 8 heads, FFN 2048
  marian          MarianMTModel, opus-mt shape (512 wide, 6 + 6 layers, 8 heads, FFN 2048)
The seq2seq rows time a forward with a 1-token decoder input (the encoder plus one decoder step: what packing
speeds up) and generate(8 new tokens, greedy: the encoder once, then 8 decoder steps that packing leaves alone).

  python bench/padding_removal_hf_cpu.py --threads 2 [--reps 9] [--json PATH] [--workloads t5-small ...]
  python bench/padding_removal_hf_cpu.py --device cuda --dtype bfloat16   # on a GPU: varlen attention runs the
      padded attention kernel there and unpacks (fastformer.ops.varlen_attention), so this says whether packing pays
"""
import argparse
import copy
import os

import torch

import fastformer as ff
from fastformer.modelbench import inputs, machine, models, report
from padding_removal_cpu import interleaved_medians

BATCH, SEQ, NEW_TOKENS = 8, 128, 8
SEQ2SEQ = dict(vocab_size=32000, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
               decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, max_position_embeddings=512,
               pad_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
WORKLOADS = {  # name -> (model class, config class, config kwargs)
    "distilbert-cls": ("DistilBertForSequenceClassification", "DistilBertConfig", {}),
    "t5-small": ("T5ForConditionalGeneration", "T5Config",
                 dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, decoder_start_token_id=0)),
    "bart-small": ("BartForConditionalGeneration", "BartConfig", SEQ2SEQ),
    "marian": ("MarianMTModel", "MarianConfig", SEQ2SEQ),
}


def build_pair(name: str, device: torch.device, dtype: torch.dtype):
    """(model optimized with pack_padding=False, the same weights optimized with the default), eval mode."""
    transformers = models.import_transformers()
    model_class, config_class, kwargs = WORKLOADS[name]
    torch.manual_seed(0)
    plain = getattr(transformers, model_class)(getattr(transformers, config_class)(**kwargs)).eval()
    plain = plain.to(device=device, dtype=dtype)
    dense = ff.optimize(copy.deepcopy(plain), pack_padding=False)
    packed = ff.optimize(plain)
    if ff.optimization_report(packed).get("packed_encoder") != 1:
        raise RuntimeError(f"{name}: ff.optimize did not pack the encoder: {ff.optimization_report(packed)}")
    return dense, packed


def bench_workload(name: str, reps: int, device: torch.device, dtype: torch.dtype) -> dict:
    dense, packed = build_pair(name, device, dtype)
    mask = inputs.spread_mask(BATCH, SEQ).to(device)  # [8, 128]
    ids = torch.randint(3, 30000, (BATCH, SEQ), device=device).masked_fill(mask == 0, 0)
    seq2seq = dense.config.is_encoder_decoder
    step = {"decoder_input_ids": torch.zeros(BATCH, 1, dtype=torch.long, device=device)} if seq2seq else {}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward(model):
        return lambda: (model(input_ids=ids, attention_mask=mask, **step), sync())[0]

    def generate(model):
        return lambda: (model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                       min_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1), sync())[0]

    runners = {"forward, pack_padding=False": forward(dense), "forward, packed": forward(packed)}
    if seq2seq:
        runners.update({"generate, pack_padding=False": generate(dense), "generate, packed": generate(packed)})
    with torch.inference_mode():
        for fn in runners.values():  # warm-up: oneDNN prepacking, first-call allocations
            fn()
        load_before = os.getloadavg()
        ms = interleaved_medians(runners, reps)
        load_after = os.getloadavg()
        want, got = forward(dense)(), forward(packed)()
        max_rel = float((got.logits - want.logits).float().abs().max() / want.logits.float().abs().max())
        same_tokens = bool(torch.equal(generate(dense)(), generate(packed)())) if seq2seq else None
    speedup = {kind: ms[f"{kind}, pack_padding=False"] / ms[f"{kind}, packed"]
               for kind in ("forward", "generate") if f"{kind}, packed" in ms}
    return {"batch": list(ids.shape), "real_tokens": int(mask.sum()), "padded_tokens": int(mask.numel()),
            "median_ms": ms, "speedup": speedup, "max_rel_logit_diff": max_rel, "same_generated_tokens": same_tokens,
            "load_average": {"before": load_before, "after": load_after}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=9, help="interleaved pairs per workload (medians)")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.json:
        report.check_writable(args.json, "--json")
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.workloads:
        r = results[name] = bench_workload(name, args.reps, device, dtype)
        print(f"{name}: {r['real_tokens']}/{r['padded_tokens']} real tokens; "
              + ", ".join(f"{k} {v:.1f} ms" for k, v in r["median_ms"].items())
              + "; speed-up " + ", ".join(f"{k} {v:.2f}x" for k, v in r["speedup"].items())
              + f"; max rel logit diff {r['max_rel_logit_diff']:.1e}, same tokens {r['same_generated_tokens']}; "
              f"load {r['load_average']['before']} -> {r['load_average']['after']}", flush=True)
    print(f"threads {args.threads}; reps {args.reps}; {args.device} {args.dtype}; "
          f"cpu_isa {machine.describe().get('cpu_isa_detected')}")
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "padding-removal-hf-cpu",
                                    "settings": {"threads": args.threads, "reps": args.reps, "device": args.device,
                                                 "dtype": args.dtype}},
                           "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
