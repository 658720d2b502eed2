"""Hugging Face interop: native models from local checkpoint folders (from_pretrained), and translation,
summarization and BLEU from strings for encoder-decoder checkpoints."""
from fastformer.hf.loading import TASKS, from_pretrained
from fastformer.hf.text2text import bleu, evaluate_bleu, summarize, translate

__all__ = ["TASKS", "bleu", "evaluate_bleu", "from_pretrained", "summarize", "translate"]
