"""CTranslate2 as a benchmark backend: the checkpoint converted once with CTranslate2's own converter
into a cache folder (FASTFORMER_CACHE, default ~/.cache/fastformer, keyed by the checkpoint's content
and the CTranslate2 version), loaded as a ctranslate2.Encoder in float32 or int8.

CTranslate2 gives hidden states for encoders only (its Generator and Translator return logits or
tokens). It takes token ids and per-row lengths, i.e. right-padded batches, and skips the padding.
Decoders (GPT-2) run as a ctranslate2.Generator for greedy decoding (bench/generation_cpu.py)."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import torch

from fastformer.modelbench.models import quiet_transformers

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


def import_ctranslate2():
    """The ctranslate2 module, its native library bound to its own bundled OpenMP runtime.

    Its wheel ships its own libgomp, but imported after torch, whose libgomp is in the process's global symbol
    scope, its library binds to torch's (LD_DEBUG=bindings shows GOMP_parallel resolved there). The two engines then
    share one OpenMP runtime, and after a CTranslate2 call torch's threads slept between parallel regions instead of
    spinning (a voluntary context switch per region). Measured on the 2-core dev VM, 2 threads, all-MiniLM-L6-v2
    batch 1 in one bench process: fastformer 7.0-7.9 ms and CTranslate2 12.5-14.9 ms that way vs 4.8-5.9 ms and
    8.5-10.1 ms with each on its own runtime, ONNX Runtime (its own thread pool) unchanged. RTLD_DEEPBIND puts the
    library's own dependencies first, as in a process of its own."""
    if sys.modules.get("ctranslate2") is not None:  # imported already (None there: import raises ImportError)
        return sys.modules["ctranslate2"]
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | os.RTLD_DEEPBIND)
    try:
        import ctranslate2
    finally:
        sys.setdlopenflags(flags)
    return ctranslate2


def cache_root() -> str:
    return os.environ.get("FASTFORMER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fastformer")


def _content_key(checkpoint: str, version: str) -> str:
    """sha256 over the config and weight files' bytes and the converter version (presets are rebuilt in
    a new temporary folder every run, with the same seeded weights: the key must not be the path)."""
    digest = hashlib.sha256(version.encode())
    for name in sorted(os.listdir(checkpoint)):
        if name == "config.json" or name.endswith(_WEIGHT_SUFFIXES):
            digest.update(name.encode())
            with open(os.path.join(checkpoint, name), "rb") as f:
                for block in iter(lambda: f.read(1 << 24), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


# Config fields CTranslate2 4.8.5's converter reads that transformers 5 leaves out of a saved config.json
# when they hold the default (AttributeError: 'BertConfig' object has no attribute 'position_embedding_type').
_CONVERTER_CONFIG_DEFAULTS = {"position_embedding_type": "absolute"}


def _checkpoint_for_converter(checkpoint: str, scratch: str) -> str:
    """`checkpoint`, or a view of it in `scratch` (links to its files) whose config.json has the defaults."""
    with open(os.path.join(checkpoint, "config.json")) as f:
        config = json.load(f)
    if all(key in config for key in _CONVERTER_CONFIG_DEFAULTS):
        return checkpoint
    view = os.path.join(scratch, "checkpoint")
    os.makedirs(view)
    for name in os.listdir(checkpoint):
        if name != "config.json":
            os.symlink(os.path.abspath(os.path.join(checkpoint, name)), os.path.join(view, name))
    with open(os.path.join(view, "config.json"), "w") as f:
        json.dump({**_CONVERTER_CONFIG_DEFAULTS, **config}, f)
    return view


class _PlaceholderTokenizer:
    """What the converter reads of a tokenizer, for a checkpoint without one (random-weight presets):
    token i is "t{i}" (CTranslate2 stores a vocabulary of the model's size; the benchmark maps ids to
    tokens and back through it, so the strings do not matter)."""

    def __init__(self, vocab_size: int):
        self.vocab = {f"t{i}": i for i in range(vocab_size)}
        self.bos_token = self.eos_token = self.unk_token = self.pad_token = f"t{vocab_size - 1}"

    def get_vocab(self) -> dict:
        return self.vocab


def _converter(checkpoint: str):
    """CTranslate2's TransformersConverter, with the placeholder vocabulary where the checkpoint has no
    tokenizer or one whose vocabulary is not the model's size."""
    ctranslate2 = import_ctranslate2()

    class Converter(ctranslate2.converters.TransformersConverter):
        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            with open(os.path.join(model_name_or_path, "config.json")) as f:
                vocab_size = json.load(f)["vocab_size"]
            try:
                tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            except (OSError, ValueError, TypeError):  # no tokenizer files
                return _PlaceholderTokenizer(vocab_size)
            return tokenizer if len(tokenizer.get_vocab()) == vocab_size else _PlaceholderTokenizer(vocab_size)

    return Converter(checkpoint)


def converted_folder(checkpoint: str, model_name: str) -> str:
    """The CTranslate2 conversion of `checkpoint`, made on first use (into a temporary folder, then
    renamed, so an interrupted conversion never leaves a broken cache entry)."""
    ctranslate2 = import_ctranslate2()

    name = os.path.basename(os.path.normpath(model_name))
    folder = os.path.join(cache_root(), "ctranslate2", f"{name}-{_content_key(checkpoint, ctranslate2.__version__)}")
    if os.path.isfile(os.path.join(folder, "model.bin")):
        return folder
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}-", dir=os.path.dirname(folder))
    try:
        source = _checkpoint_for_converter(checkpoint, staging)
        # The converter prints its progress and loads the model with a dtype argument transformers warns about.
        with quiet_transformers(), contextlib.redirect_stdout(io.StringIO()):
            _converter(source).convert(os.path.join(staging, "model"), force=True)
        try:
            os.replace(os.path.join(staging, "model"), folder)
        except OSError:  # another run converted the same checkpoint meanwhile
            if not os.path.isfile(os.path.join(folder, "model.bin")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def encoder_runner(folder: str, compute_type: str, threads: int):
    """A callable taking the benchmark's keyword inputs (right-padded input_ids and attention_mask) and
    giving the last hidden state [B, S, H] as a torch tensor."""
    ctranslate2 = import_ctranslate2()

    encoder = ctranslate2.Encoder(folder, device="cpu", compute_type=compute_type, intra_threads=threads,
                                  inter_threads=1)

    def run(input_ids, attention_mask, **_):
        ids = ctranslate2.StorageView.from_array(input_ids.to(torch.int32).cpu().numpy())  # [B, S]
        lengths = ctranslate2.StorageView.from_array(attention_mask.sum(1).to(torch.int32).cpu().numpy())  # [B]
        return torch.from_numpy(np.array(encoder.forward_batch(ids, lengths).last_hidden_state))

    return run


def generator_runner(folder: str, compute_type: str, threads: int):
    """A callable (input_ids [B, S], new_tokens) -> the greedy continuation [B, new_tokens] (token ids),
    exactly new_tokens long (no end token stops it), as fastformer's generate(eos_token_id=None)."""
    ctranslate2 = import_ctranslate2()

    generator = ctranslate2.Generator(folder, device="cpu", compute_type=compute_type, intra_threads=threads,
                                      inter_threads=1)
    with open(os.path.join(folder, "vocabulary.json")) as f:
        vocabulary = json.load(f)  # token strings by id

    def run(input_ids, new_tokens: int) -> torch.Tensor:
        prompts = [[vocabulary[i] for i in row] for row in input_ids.tolist()]
        results = generator.generate_batch(prompts, max_length=new_tokens, min_length=new_tokens, sampling_topk=1,
                                           include_prompt_in_result=False, end_token=[])
        return torch.tensor([r.sequences_ids[0] for r in results])  # [B, new_tokens]

    return run
