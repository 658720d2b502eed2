"""Reading a local Hugging Face checkpoint folder: config.json and the weights (safetensors, or
pytorch_model.bin with weights_only=True), with clear errors for anything else. No network."""
import json
import os

import torch


class CheckpointError(ValueError):
    """The folder is not a usable Hugging Face checkpoint (the message says why)."""


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_config(path: str) -> dict:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a local folder path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"path {path!r} is not a folder (fastformer loads local checkpoints only, no downloads)")
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise CheckpointError(f"{path!r} is not a Hugging Face checkpoint: it has no config.json")
    try:
        with open(config_file) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file} is not valid JSON: {e}") from e
    if "model_type" not in config:
        raise CheckpointError(f"{config_file} has no model_type")
    return config


def read_weights(path: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            break
    else:
        raise CheckpointError(f"{path!r} has no weights: expected one of {WEIGHT_FILES} (sharded checkpoints are "
                              "not supported)")
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file)
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors and pickle raise many types for a damaged file
        raise CheckpointError(f"could not read weights from {file}: {type(e).__name__}: {e}") from e
