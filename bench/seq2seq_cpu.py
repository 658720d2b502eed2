"""Encoder-decoder translation: fastformer generate vs Hugging Face generate, greedy, on random-weight
models of two real shapes, a batch of short source sentences of mixed lengths (right-padded),
interleaved in one run, medians. Prints ms per call, new tokens/s and whether both produced the same
tokens.

  python bench/seq2seq_cpu.py --threads 2 [--models t5-small marian] [--batch 32] [--new 32] [--reps 5] [--json PATH]
  python bench/seq2seq_cpu.py --device cuda   # fp16 on a GPU

t5-small: the default T5Config (6+6 layers, d_model 512, 8 heads, relative bias); marian: the shape of
Helsinki-NLP/opus-mt-en-de (6+6 layers, d_model 512, swish, sinusoidal positions, 58101 tokens).
Latency does not depend on weight values; no EOS is set, so every call makes exactly --new tokens.
"""
import argparse
import tempfile

import torch
from generation_cpu import interleaved_medians, write_json  # bench/ is the script's folder, so on sys.path

import fastformer as ff

SHAPES = {
    "t5-small": ("T5Config", "T5ForConditionalGeneration", dict(decoder_start_token_id=0)),
    "marian": ("MarianConfig", "MarianMTModel",
               dict(vocab_size=58101, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                    decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, activation_function="swish",
                    scale_embedding=True, max_position_embeddings=512, pad_token_id=58100, eos_token_id=0,
                    decoder_start_token_id=58100)),
}


def _save(name, tmp):
    import transformers

    config_cls, model_cls, kwargs = SHAPES[name]
    torch.manual_seed(0)
    path = f"{tmp}/{name}-random"
    getattr(transformers, model_cls)(getattr(transformers, config_cls)(**kwargs)).save_pretrained(path)
    return path


def _sources(batch, device):
    """Short sentences of 8 to 24 tokens, right-padded with token 0 and masked."""
    lengths = torch.randint(8, 25, (batch,))
    ids = torch.randint(100, 1000, (batch, int(lengths.max())))
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return (ids * mask).to(device), mask.to(device)


def bench(name, path, batch, new_tokens, reps, device, dtype):
    import transformers

    hf = getattr(transformers, SHAPES[name][1]).from_pretrained(path, dtype=dtype).to(device).eval()
    hf.generation_config.eos_token_id = None  # every call makes exactly new_tokens tokens
    hf.generation_config.forced_eos_token_id = None
    native = ff.from_pretrained(path, dtype=dtype, device=device)
    ids, mask = _sources(batch, device)
    runners = {
        "hf": lambda: hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                  num_beams=1),
        "fastformer": lambda: native.generate(ids, mask, max_new_tokens=new_tokens, eos_token_id=None),
    }
    with torch.inference_mode():
        outputs = {k: f() for k, f in runners.items()}
        same = torch.equal(outputs["hf"].cpu(), outputs["fastformer"].cpu())
        medians = interleaved_medians(runners, reps, device)
    print(f"\n{name}: batch {batch} sources of 8-24 tokens, {new_tokens} new tokens, greedy, {dtype}, {device}, "
          f"{torch.get_num_threads()} threads, {reps} interleaved reps (medians); same tokens: {same}")
    for k, m in medians.items():
        print(f"  {k:<11} {m * 1e3:9.1f} ms   {batch * new_tokens / m:8.0f} new tokens/s   x{medians['hf'] / m:5.2f} vs hf")
    return {k: {"ms_per_call": m * 1e3, "new_tokens_per_s": batch * new_tokens / m, "same_tokens_as_hf": same}
            for k, m in medians.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", metavar="PATH", help="also write the results, machine and versions as JSON")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    with tempfile.TemporaryDirectory() as tmp:
        results = {name: bench(name, _save(name, tmp), args.batch, args.new, args.reps, device, dtype)
                   for name in args.models}
    if args.json:
        settings = {"decoding": "greedy", "batch": args.batch, "source_tokens": "8-24, right-padded",
                    "new_tokens": args.new, "reps": args.reps, "device": args.device,
                    "dtype": str(dtype).removeprefix("torch."), "weights": "random"}
        write_json(args.json, "seq2seq-greedy-translation", settings, results)


if __name__ == "__main__":
    main()
