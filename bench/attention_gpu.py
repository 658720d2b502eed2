"""Attention on the GPU: fastformer's CUDA and Triton kernels against every F.scaled_dot_product_attention
backend (flash, efficient, cudnn, math), fp16 and bf16, median times.

Sections (FLOPs = 4*B*H*Sq*Sk*D, halved for causal self-attention; backward counts 2.5x the forward):
  fwd     forward, D 64 / 128, S 1k..16k, causal and not, B = 16k / S, H = 2048 / D
  t5      forward with T5 relative position bias: ours computes it in the kernel from the bucket table,
          SDPA gets the materialized [1, H, S, S] bias as attn_mask (built outside the timed region)
  decode  Sq = 1 against Sk 4k..32k keys (KV-cache decoding), also reported as K/V read bandwidth
  bert    BERT-base attention shapes (B 8..32, H 12, S 128..512, D 64) with a key padding mask
  bwd     backward of the Triton kernels (fastformer.ops.attention, backend="triton") vs SDPA backward

Writes JSON (device, torch/triton/CUDA versions, git sha, one record per measurement) and prints a
table with each implementation's TFLOP/s and the ratio ours / best SDPA backend.

    python bench/attention_gpu.py [--sections fwd,t5,...] [--out bench/results/attention_gpu.json]
    python bench/attention_gpu.py --smoke     # one small shape per section; without a GPU: says so, exits 0

The JSON is rewritten after every config, so a run cut off by a time limit keeps what it measured. The
default --out is bench/results/attention_gpu.json under $OUT when $OUT is set (on the device machine only
$OUT comes back), else under the repository.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fastformer.modelbench.machine import git_sha

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("fwd", "t5", "decode", "bert", "bwd")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
MATH_MAX_SEQ = 4096  # the math backend materializes [B, H, S, S] scores: slow and large beyond this


@dataclass
class Config:
    section: str
    dtype: str
    batch: int
    heads: int
    seqlen_q: int
    seqlen_k: int
    head_dim: int
    causal: bool = False

    def label(self) -> str:
        parts = [self.section, self.dtype, f"B{self.batch} H{self.heads} Sq{self.seqlen_q} Sk{self.seqlen_k} "
                 f"D{self.head_dim}"]
        if self.causal:
            parts.append("causal")
        return " ".join(parts)

    def flops(self) -> float:
        f = 4.0 * self.batch * self.heads * self.seqlen_q * self.seqlen_k * self.head_dim
        if self.causal and self.seqlen_q == self.seqlen_k:
            f /= 2
        return f * (2.5 if self.section == "bwd" else 1.0)


def configs(sections, smoke: bool):
    out = []
    seqs = [1024] if smoke else [1024, 2048, 4096, 8192, 16384]
    for dtype in (["fp16"] if smoke else list(DTYPES)):
        if "fwd" in sections or "bwd" in sections:
            for section in [s for s in ("fwd", "bwd") if s in sections]:
                for d in (64, 128):
                    for s in (seqs if section == "fwd" else [s for s in seqs if s <= 8192]):
                        for causal in (False, True):
                            out.append(Config(section, dtype, 16384 // s, 2048 // d, s, s, d, causal))
        if "t5" in sections:
            for s in ([512] if smoke else [512, 1024, 2048, 4096]):
                out.append(Config("t5", dtype, max(1, 8192 // s), 12, s, s, 64))
        if "decode" in sections:
            for sk in ([4096] if smoke else [4096, 8192, 16384, 32768]):
                out.append(Config("decode", dtype, 8, 32, 1, sk, 128))
        if "bert" in sections:
            for b in ([8] if smoke else [8, 16, 32]):
                for s in ([128] if smoke else [128, 256, 384, 512]):
                    out.append(Config("bert", dtype, b, 12, s, s, 64))
    return out


# ------------------------------------------------------------------------------------------------
# Inputs


def t5_bucket_lut(num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """T5's bidirectional bucket of each distance n in [0, max_distance] (the half for rel <= 0; the
    kernel adds num_buckets / 2 for rel > 0): exact below num_buckets / 4, log-spaced up to max_distance."""
    half = num_buckets // 2
    exact = half // 2
    n = torch.arange(max_distance + 1, dtype=torch.float64)
    log_bucket = exact + (torch.log(n.clamp(min=1) / exact) / torch.log(torch.tensor(max_distance / exact))
                          * (half - exact)).long()
    return torch.where(n < exact, n.long(), log_bucket.clamp(max=half - 1)).to(torch.int32)


def make_inputs(cfg: Config):
    dtype, dev = DTYPES[cfg.dtype], "cuda"
    B, H, Sq, Sk, D = cfg.batch, cfg.heads, cfg.seqlen_q, cfg.seqlen_k, cfg.head_dim
    needs_grad = cfg.section == "bwd"
    q = torch.randn(B, H, Sq, D, dtype=dtype, device=dev, requires_grad=needs_grad)  # [B, H, Sq, D]
    k = torch.randn(B, H, Sk, D, dtype=dtype, device=dev, requires_grad=needs_grad)  # [B, H, Sk, D]
    v = torch.randn(B, H, Sk, D, dtype=dtype, device=dev, requires_grad=needs_grad)
    inputs = dict(q=q, k=k, v=v, attn_bias=None, key_padding_mask=None, rel_table=None, rel_lut=None,
                  rel_bidirectional=False, causal=cfg.causal, scale=D ** -0.5, dropout_p=0.0, seed=0,
                  sdpa_mask=None)
    if cfg.section == "t5":
        lut = t5_bucket_lut().to(dev)
        table = torch.randn(32, H, device=dev)  # [num_buckets, H]
        i = torch.arange(Sq, device=dev)[:, None]
        rel = torch.arange(Sk, device=dev)[None, :] - (i + Sk - Sq)  # [Sq, Sk]
        bucket = lut.long()[rel.abs().clamp(max=lut.numel() - 1)] + (rel > 0).long() * 16
        inputs.update(rel_table=table, rel_lut=lut, rel_bidirectional=True,
                      sdpa_mask=table[bucket].permute(2, 0, 1)[None].to(dtype))  # [1, H, Sq, Sk]
    if cfg.section == "bert":
        lengths = torch.randint(Sk // 2, Sk + 1, (B,), device=dev)
        mask = torch.arange(Sk, device=dev)[None, :] < lengths[:, None]  # [B, Sk], True = attend
        inputs.update(key_padding_mask=mask, sdpa_mask=mask[:, None, None, :])  # [B, 1, 1, Sk]
    return inputs


# ------------------------------------------------------------------------------------------------
# Implementations: name -> fn(inputs) returning the output (forward) or a closure (backward)


def fastformer_forwards():
    """Our forward kernels: the CUDA op (when built with CUDA) and the Triton twin op (when registered)."""
    import fastformer  # registers torch.ops.fastformer.*

    def call(op):
        return lambda x: op(x["q"], x["k"], x["v"], x["attn_bias"], x["key_padding_mask"], x["rel_table"],
                            x["rel_lut"], x["rel_bidirectional"], x["causal"], x["scale"], x["dropout_p"], x["seed"])

    impls = {}
    if fastformer._C.cuda_built:
        impls["ours_cuda"] = call(torch.ops.fastformer.attention_fwd)
    if hasattr(torch.ops.fastformer, "attention_fwd_triton"):
        impls["ours_triton"] = call(torch.ops.fastformer.attention_fwd_triton)
    return impls


def sdpa_backends():
    from torch.nn.attention import SDPBackend
    return {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_math": SDPBackend.MATH}


def sdpa_call(backend, x):
    from torch.nn.attention import sdpa_kernel
    with sdpa_kernel(backend):
        # SDPA's is_causal is top-left aligned; ours is bottom-right. They agree when Sq == Sk, the only
        # causal shapes benchmarked.
        return F.scaled_dot_product_attention(x["q"], x["k"], x["v"], attn_mask=x["sdpa_mask"],
                                              is_causal=x["causal"], scale=x["scale"])


def implementations(cfg: Config):
    """{name: fn(inputs)} for this config; fn runs the timed work."""
    impls = {}
    if cfg.section == "bwd":
        import fastformer as ff
        if hasattr(ff.ops, "attention"):
            impls["ours_triton"] = lambda x: ff.ops.attention(x["q"], x["k"], x["v"], causal=x["causal"],
                                                              scale=x["scale"], backend="triton")
    else:
        impls.update(fastformer_forwards())
    for name, backend in sdpa_backends().items():
        if name == "sdpa_math" and max(cfg.seqlen_q, cfg.seqlen_k) > MATH_MAX_SEQ:
            continue
        impls[name] = lambda x, b=backend: sdpa_call(b, x)
    return impls


# ------------------------------------------------------------------------------------------------
# Timing


def median_ms(fn, warmup: int, rep: int) -> float:
    try:
        from triton.testing import do_bench
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    except ImportError:
        pass
    for _ in range(3):
        fn()
    times = []
    deadline = time.perf_counter() + rep / 1000
    while len(times) < 5 or time.perf_counter() < deadline:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def default_out() -> Path:
    return (Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT) / "bench/results/attention_gpu.json"


def measure(cfg: Config, name: str, impl, inputs, warmup: int, rep: int) -> dict:
    record = dict(section=cfg.section, dtype=cfg.dtype, batch=cfg.batch, heads=cfg.heads, seqlen_q=cfg.seqlen_q,
                  seqlen_k=cfg.seqlen_k, head_dim=cfg.head_dim, causal=cfg.causal, impl=name)
    try:
        if cfg.section == "bwd":
            out = impl(inputs)
            grad = torch.randn_like(out)
            leaves = (inputs["q"], inputs["k"], inputs["v"])
            fn = lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)  # noqa: E731
        else:
            fn = lambda: impl(inputs)  # noqa: E731
        fn()
        torch.cuda.synchronize()
        ms = median_ms(fn, warmup, rep)
    except Exception as e:  # unsupported shape/backend, OOM, a Triton compile error: report, measure the rest
        torch.cuda.empty_cache()
        record["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return record
    record["ms"] = ms
    record["tflops"] = cfg.flops() / (ms * 1e-3) / 1e12
    if cfg.section == "decode":
        kv_bytes = 2 * cfg.batch * cfg.heads * cfg.seqlen_k * cfg.head_dim * DTYPES[cfg.dtype].itemsize
        record["kv_gbps"] = kv_bytes / (ms * 1e-3) / 1e9
    return record


# ------------------------------------------------------------------------------------------------
# Report


def environment() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return dict(device=torch.cuda.get_device_name(), capability=".".join(map(str, torch.cuda.get_device_capability())),
                torch=torch.__version__, cuda=torch.version.cuda, triton=triton_version, python=platform.python_version(),
                git_sha=git_sha(), time=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def print_table(records):
    by_config = {}
    for r in records:
        key = (r["section"], r["dtype"], r["batch"], r["heads"], r["seqlen_q"], r["seqlen_k"], r["head_dim"],
               r["causal"])
        by_config.setdefault(key, {})[r["impl"]] = r
    names = sorted({r["impl"] for r in records}, key=lambda n: (not n.startswith("ours"), n))
    header = f"{'config':<52}" + "".join(f"{n:>15}" for n in names) + "  ours / best sdpa"
    print(header)
    print("-" * len(header))
    for (section, dtype, b, h, sq, sk, d, causal), impls in by_config.items():
        label = f"{section} {dtype} B{b} H{h} Sq{sq} Sk{sk} D{d}{' causal' if causal else ''}"
        cells = "".join(f"{impls[n]['tflops']:>15.1f}" if "tflops" in impls.get(n, {}) else f"{'-':>15}"
                        for n in names)
        sdpa = [r["tflops"] for n, r in impls.items() if n.startswith("sdpa") and "tflops" in r]
        ours = {n: r["tflops"] for n, r in impls.items() if n.startswith("ours") and "tflops" in r}
        ratio = " ".join(f"{n[5:]} {t / max(sdpa):.2f}x" for n, t in ours.items()) if sdpa and ours else "-"
        print(f"{label:<52}{cells}  {ratio}")
    print("(TFLOP/s; decode records also carry kv_gbps, the K/V read bandwidth, in the JSON)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="one small shape per section, short timing")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=default_out(), help="JSON output path")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_gpu: no CUDA GPU is visible to torch "
              f"(torch {torch.__version__}, CUDA {torch.version.cuda}); nothing to measure.")
        return 0
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {SECTIONS}")
    warmup, rep = (5, 20) if args.smoke else (25, 100)
    env = environment()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    for cfg in configs(sections, args.smoke):
        torch.manual_seed(0)
        inputs = make_inputs(cfg)
        for name, impl in implementations(cfg).items():
            record = measure(cfg, name, impl, inputs, warmup, rep)
            records.append(record)
            status = f"{record['tflops']:7.1f} TFLOP/s" if "tflops" in record else record["error"]
            print(f"{cfg.label():<58} {name:<15} {status}", file=sys.stderr, flush=True)
        del inputs
        torch.cuda.empty_cache()
        args.out.write_text(json.dumps(dict(environment=env, records=records), indent=1) + "\n")
    print(f"\n{env['device']} (sm_{env['capability']}), torch {env['torch']}, CUDA {env['cuda']}, "
          f"triton {env['triton']}, git {env['git_sha']}")
    print_table(records)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
