"""Hugging Face interop: native models from local checkpoint folders (from_pretrained)."""
from fastformer.hf.loading import TASKS, from_pretrained

__all__ = ["TASKS", "from_pretrained"]
