"""Native transformer models: the shared block, encoder, decoder and encoder-decoder models and their task
heads (neural-network modules only; strings in, strings out is fastformer.pipelines)."""
from fastformer.models.config import ModelConfig
from fastformer.models.decoder import Decoder, DecoderForCausalLM, DecoderForSequenceClassification
from fastformer.models.encoder import Encoder
from fastformer.models.heads import (EncoderForMaskedLM, EncoderForQuestionAnswering, EncoderForSentenceEmbedding,
                                     EncoderForSequenceClassification, EncoderForTokenClassification)
from fastformer.models.seq2seq import Seq2SeqConfig, Seq2SeqForConditionalGeneration
from fastformer.models.training import freeze

__all__ = ["Decoder", "DecoderForCausalLM", "DecoderForSequenceClassification", "Encoder", "EncoderForMaskedLM",
           "EncoderForQuestionAnswering", "EncoderForSentenceEmbedding", "EncoderForSequenceClassification",
           "EncoderForTokenClassification", "ModelConfig", "Seq2SeqConfig", "Seq2SeqForConditionalGeneration",
           "freeze"]
