"""The linears of a few rows (issue 12 item 2): fastformer's panel_linear against oneDNN's prepacked product, on the
24 products of an all-MiniLM-L6-v2 forward (6 layers of qkv 1152 x 384, out 384 x 384, up 1536 x 384, down 384 x
1536; 42.5 MB of fp32 weights, random values: only the shapes matter), called in turn from Python, as a forward calls
them. The weights do not stay in the caches between passes (42.5 MB for each of the two packs), as in a model.

Per row count, both products run interleaved (a pass of one, a pass of the other, per round); the table gives each
one's median pass and the ratio. ff.nn.Linear runs panel_linear up to PANEL_MAX_ROWS rows (2 or more; one row is
ff.ops.gemv's) and oneDNN above.

  python bench/panel_linear_cpu.py [--rows 2,8,18,32,48,64,96,128] [--threads 2] [--rounds 100] [--json PATH]
"""
import argparse
import os
import statistics
import time

import torch

from fastformer.modelbench import machine, report
from fastformer.ops import panel_linear as pl

# Each model's linears in forward order, [N, K]: qkv, out, up, down per layer.
SHAPES = {"all-MiniLM-L6-v2": [(1152, 384), (384, 384), (1536, 384), (384, 1536)] * 6,  # 42.5 MB of weights
          "bert-base": [(2304, 768), (768, 768), (3072, 768), (768, 3072)] * 12}  # 340 MB


def _pass_ms(products) -> float:
    start = time.perf_counter()
    for product in products:
        product()
    return (time.perf_counter() - start) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="2,8,18,32,48,64,96,128")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--model", choices=sorted(SHAPES), default="all-MiniLM-L6-v2", help="whose products")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    if not pl.AVAILABLE:
        raise SystemExit("this build has no panel_linear kernel (AVX2 builds only)")
    if args.json:
        report.check_writable(args.json, "--json")
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = SHAPES[args.model]
    weights = [torch.randn(n, k, generator=gen) / k ** 0.5 for n, k in shapes]
    biases = [torch.randn(n, generator=gen) for n, _ in shapes]
    load_before = os.getloadavg()
    results = {}
    with torch.inference_mode():
        onednn_weights = [torch.ops.mkldnn._reorder_linear_weight(w) for w in weights]
        panels = [pl.pack_panels(w) for w in weights]
        for rows in (int(r) for r in args.rows.split(",")):
            inputs = {k: torch.randn(rows, k, generator=gen) for k in {k for _, k in shapes}}
            products = {
                "onednn": [lambda x=inputs[w.shape[1]], p=p, b=b: torch.ops.mkldnn._linear_pointwise(
                    x, p, b, "none", [], "") for w, p, b in zip(weights, onednn_weights, biases)],
                "panel_linear": [lambda x=inputs[w.shape[1]], p=p, b=b: pl.panel_linear_checked(x, p, b, "none")
                                 for w, p, b in zip(weights, panels, biases)]}
            for name in products:  # warm-up; and the two agree
                _pass_ms(products[name])
            w, b = weights[0], biases[0]
            x = inputs[w.shape[1]]
            torch.testing.assert_close(pl.panel_linear_checked(x, panels[0], b, "none"),
                                       torch.nn.functional.linear(x, w, b), rtol=1e-4, atol=1e-4)
            times = {name: [] for name in products}
            for _ in range(args.rounds):
                for name, calls in products.items():
                    times[name].append(_pass_ms(calls))
            medians = {name: statistics.median(t) for name, t in times.items()}
            results[str(rows)] = {**{f"{name}_ms": ms for name, ms in medians.items()},
                                  "panel_over_onednn": medians["panel_linear"] / medians["onednn"]}
            print(f"{rows:4d} rows: oneDNN {medians['onednn']:7.3f} ms, panel_linear {medians['panel_linear']:7.3f} "
                  f"ms, ratio {results[str(rows)]['panel_over_onednn']:.3f}", flush=True)
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"threads {args.threads}; load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        report.write_json({"meta": {**machine.describe(), "benchmark": "panel-linear-cpu",
                                    "settings": {"model": args.model, "threads": args.threads, "rounds": args.rounds,
                                                 "panel_max_rows": pl.PANEL_MAX_ROWS},
                                    "load_average": load, "units": "ms per pass of the 24 products"},
                           "results": results}, args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
