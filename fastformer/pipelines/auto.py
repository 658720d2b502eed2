"""pipeline(path): the pipeline for whatever task a checkpoint folder holds."""
from fastformer.hf.checkpoint import read_config
from fastformer.hf.loading import checkpoint_task
from fastformer.pipelines.classification import Classifier, TokenClassifier
from fastformer.pipelines.embeddings import Embedder
from fastformer.pipelines.qa import QuestionAnswerer
from fastformer.pipelines.text2text import Summarizer, Translator
from fastformer.pipelines.text_generation import TextGenerator

PIPELINES = {"sentence-embedding": Embedder, "sequence-classification": Classifier,
             "token-classification": TokenClassifier, "question-answering": QuestionAnswerer,
             "causal-lm": TextGenerator, "seq2seq-lm": None}  # seq2seq: Translator for Marian, else Summarizer


def pipeline(path, task: str | None = None, dtype=None, device=None, quantize=None):
    """(task, pipeline) for the checkpoint folder: `task` (one of PIPELINES) or the one the folder holds;
    quantize: None, "int8" or "bf16" (fastformer.hf.from_pretrained's, for CPU inference)."""
    task = task or checkpoint_task(path)
    if task not in PIPELINES:
        raise ValueError(f"task {task!r} of {path} has no pipeline; pipelines exist for {sorted(PIPELINES)}")
    if task == "seq2seq-lm":
        make = Translator if read_config(path)["model_type"] == "marian" else Summarizer
    else:
        make = PIPELINES[task]
    return task, make(path, dtype=dtype, device=device, quantize=quantize)
