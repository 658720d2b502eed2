"""Native transformer models: the shared block, encoder models and their task heads."""
from fastformer.models.config import ModelConfig
from fastformer.models.encoder import Encoder
from fastformer.models.heads import (EncoderForMaskedLM, EncoderForQuestionAnswering, EncoderForSentenceEmbedding,
                                     EncoderForSequenceClassification, EncoderForTokenClassification)
from fastformer.models.training import freeze

__all__ = ["Encoder", "EncoderForMaskedLM", "EncoderForQuestionAnswering", "EncoderForSentenceEmbedding",
           "EncoderForSequenceClassification", "EncoderForTokenClassification", "ModelConfig", "freeze"]
