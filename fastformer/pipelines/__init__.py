"""Strings in, outputs out: each pipeline loads a native model (fastformer.hf.from_pretrained) and the
tokenizer saved in the same checkpoint folder (load_tokenizer)."""
from fastformer.pipelines.auto import PIPELINES, pipeline
from fastformer.pipelines.classification import Classifier, TokenClassifier
from fastformer.pipelines.embeddings import Embedder
from fastformer.pipelines.encoding import BatchStats, EncoderPipeline
from fastformer.pipelines.qa import Answer, QuestionAnswerer, best_span
from fastformer.pipelines.text2text import Summarizer, Text2Text, Translator, bleu, evaluate_bleu
from fastformer.pipelines.text_generation import Completion, TextGenerator
from fastformer.pipelines.texts import InputTooLong, check_texts
from fastformer.pipelines.tokenizer import TOKENIZER_FILES, load_tokenizer

__all__ = ["Answer", "BatchStats", "Classifier", "Completion", "Embedder", "EncoderPipeline", "InputTooLong",
           "PIPELINES", "QuestionAnswerer", "Summarizer", "TOKENIZER_FILES", "Text2Text", "TextGenerator",
           "TokenClassifier", "Translator", "best_span", "bleu", "check_texts", "evaluate_bleu", "load_tokenizer",
           "pipeline"]
