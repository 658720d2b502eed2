"""Native transformer models: the shared block, encoder and decoder models and their task heads."""
from fastformer.models.config import ModelConfig
from fastformer.models.decoder import Decoder, DecoderForCausalLM, DecoderForSequenceClassification
from fastformer.models.encoder import Encoder
from fastformer.models.heads import (EncoderForMaskedLM, EncoderForQuestionAnswering, EncoderForSentenceEmbedding,
                                     EncoderForSequenceClassification, EncoderForTokenClassification)
from fastformer.models.text_generation import TextGenerator
from fastformer.models.training import freeze

__all__ = ["Decoder", "DecoderForCausalLM", "DecoderForSequenceClassification", "Encoder", "EncoderForMaskedLM",
           "EncoderForQuestionAnswering", "EncoderForSentenceEmbedding", "EncoderForSequenceClassification",
           "EncoderForTokenClassification", "ModelConfig", "TextGenerator", "freeze"]
