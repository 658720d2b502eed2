"""CTranslate2 as a benchmark backend: the checkpoint converted once with CTranslate2's own converter
into a cache folder (FASTFORMER_CACHE, default ~/.cache/fastformer, keyed by the checkpoint's content
and the CTranslate2 version), loaded as a ctranslate2.Encoder in float32 or int8.

CTranslate2 gives hidden states for encoders only (its Generator and Translator return logits or
tokens). It takes token ids and per-row lengths, i.e. right-padded batches, and skips the padding."""
import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile

import numpy as np
import torch

from fastformer.modelbench.models import quiet_transformers

_WEIGHT_SUFFIXES = (".safetensors", ".bin")


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


def converted_folder(checkpoint: str, model_name: str) -> str:
    """The CTranslate2 conversion of `checkpoint`, made on first use (into a temporary folder, then
    renamed, so an interrupted conversion never leaves a broken cache entry)."""
    import ctranslate2

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
            ctranslate2.converters.TransformersConverter(source).convert(os.path.join(staging, "model"), force=True)
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
    import ctranslate2

    encoder = ctranslate2.Encoder(folder, device="cpu", compute_type=compute_type, intra_threads=threads,
                                  inter_threads=1)

    def run(input_ids, attention_mask, **_):
        ids = ctranslate2.StorageView.from_array(input_ids.to(torch.int32).cpu().numpy())  # [B, S]
        lengths = ctranslate2.StorageView.from_array(attention_mask.sum(1).to(torch.int32).cpu().numpy())  # [B]
        return torch.from_numpy(np.array(encoder.forward_batch(ids, lengths).last_hidden_state))

    return run
