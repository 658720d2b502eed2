"""CPU attention forward at common and odd head dims: ff.ops.attention (C++ kernel) against
F.scaled_dot_product_attention, fp32, same inputs, timed interleaved (fastformer.modelbench.timing), medians.

Shape: B x H x S x D self-attention with a key padding mask (the last quarter of row 1's keys masked),
H * D ~ 768 as in BERT-base (H = 768 // D, at least 1). Prints ms per call and SDPA's time / ours (> 1: ours
is faster) for each thread count, and the 1-minute load average (the machine may be shared).

  python bench/attention_head_dims_cpu.py [--head-dims 48,64,72,80,160] [--threads 1,2] [--batch 2]
                                          [--seq 128] [--reps 20] [--json PATH]
"""
import argparse

import torch
import torch.nn.functional as F

import fastformer as ff
from fastformer.modelbench import machine, report, timing


def _inputs(batch: int, seq: int, head_dim: int):
    heads = max(1, 768 // head_dim)
    q, k, v = (torch.randn(batch, heads, seq, head_dim) for _ in range(3))  # [B, H, S, D]
    keep = torch.ones(batch, seq, dtype=torch.bool)  # [B, S], True = attend
    keep[1:, 3 * seq // 4:] = False
    return q, k, v, keep


def bench_head_dim(batch: int, seq: int, head_dim: int, reps: int) -> dict:
    q, k, v, keep = _inputs(batch, seq, head_dim)
    sdpa_mask = keep[:, None, None, :]  # [B, 1, 1, S]
    ours = lambda: ff.ops.attention(q, k, v, key_padding_mask=keep)  # noqa: E731
    sdpa = lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=sdpa_mask)  # noqa: E731
    torch.testing.assert_close(ours(), sdpa(), rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        ours_s, sdpa_s = timing.sample_interleaved([ours, sdpa], reps)
    ours_ms, sdpa_ms = (timing.summarize(s)["median_ms"] for s in (ours_s, sdpa_s))
    return {"head_dim": head_dim, "heads": q.shape[1], "batch": batch, "seq": seq, "threads": torch.get_num_threads(),
            "fastformer_ms": round(ours_ms, 4), "sdpa_ms": round(sdpa_ms, 4),
            "sdpa_over_fastformer": round(sdpa_ms / ours_ms, 3)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head-dims", default="48,64,72,80,160")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if args.json:
        report.check_writable(args.json, "--json")  # fails now, not after the run
    torch.manual_seed(0)
    results = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for head_dim in (int(d) for d in args.head_dims.split(",")):
            row = bench_head_dim(args.batch, args.seq, head_dim, args.reps)
            results.append(row)
            print(f"threads {threads}  D {head_dim:4d}  H {row['heads']:3d}  fastformer {row['fastformer_ms']:8.3f} ms"
                  f"  sdpa {row['sdpa_ms']:8.3f} ms  sdpa/ours {row['sdpa_over_fastformer']:.2f}")
    meta = {**machine.describe(), "benchmark": "attention_head_dims_cpu", "settings": vars(args)}
    print(f"load average (1 min): {meta['load_average_1m']}")
    if args.json:
        report.write_json({"meta": meta, "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
