"""BERT, RoBERTa and DistilBERT: Hugging Face config -> ModelConfig, and one key map per family."""
from fastformer.models.config import ModelConfig
from fastformer.nn.activation import activation_name


def _labels(hf: dict) -> dict:
    id2label = hf.get("id2label") or {}
    return {"num_labels": len(id2label) if id2label else hf.get("num_labels", 2),
            "id2label": {int(k): v for k, v in id2label.items()}, "problem_type": hf.get("problem_type")}


def bert_config(hf: dict) -> ModelConfig:
    """BERT and RoBERTa share the config layout; RoBERTa counts positions from the padding index."""
    roberta = hf["model_type"] in ("roberta", "xlm-roberta")
    for key in ("is_decoder", "add_cross_attention"):
        # The native encoder attends bidirectionally and has no cross-attention: loading such a checkpoint
        # would compute something else than transformers without a word.
        if hf.get(key):
            raise ValueError(f"{hf['model_type']} with {key}=true in config.json (a causal or cross-attending "
                             "decoder, e.g. BertLMHeadModel) is not supported; ff.optimize runs it in transformers")
    return ModelConfig(
        model_type=hf["model_type"], vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
        num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        activation=activation_name(hf.get("hidden_act", "gelu"), "hidden_act"),
        norm_eps=hf.get("layer_norm_eps", 1e-12), max_positions=hf.get("max_position_embeddings", 512),
        positions_from_padding=roberta, type_vocab_size=hf.get("type_vocab_size", 2),
        pad_token_id=hf.get("pad_token_id", 1 if roberta else 0) or 0,
        dropout=hf.get("hidden_dropout_prob", 0.1), attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=hf.get("classifier_dropout"),
        extra={"classifier": {"act": "tanh", "dropout_before_dense": roberta},
               "tie_word_embeddings": hf.get("tie_word_embeddings", True) is not False,
               # RobertaLMHead applies gelu whatever hidden_act says; BERT's head applies hidden_act.
               **({"mlm_activation": "gelu"} if roberta else {})},
        **_labels(hf))


def distilbert_config(hf: dict) -> ModelConfig:
    # sinusoidal_pos_embds: transformers fills position_embeddings with fixed sinusoids and saves them in the
    # checkpoint like learned ones, so the learned-table path reads them as they are.
    return ModelConfig(
        model_type="distilbert", vocab_size=hf["vocab_size"], hidden_size=hf["dim"], num_layers=hf["n_layers"],
        num_heads=hf["n_heads"], intermediate_size=hf["hidden_dim"],
        activation=activation_name(hf.get("activation", "gelu")),
        norm_eps=1e-12, max_positions=hf.get("max_position_embeddings", 512), type_vocab_size=0,
        pad_token_id=hf.get("pad_token_id", 0) or 0, dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.1), classifier_dropout=hf.get("seq_classif_dropout", 0.2),
        extra={"classifier": {"act": "relu"}, "qa_dropout": hf.get("qa_dropout", 0.1),
               "tie_word_embeddings": hf.get("tie_word_embeddings", True) is not False},
        **_labels(hf))


_BERT_LAYER = "{p}encoder.layer.{i}."
_BERT_BODY = [
    ("encoder.embeddings.word.weight", "{p}embeddings.word_embeddings.weight"),
    ("encoder.embeddings.position.weight", "{p}embeddings.position_embeddings.weight"),
    ("encoder.embeddings.token_type.weight", "{p}embeddings.token_type_embeddings.weight"),
    ("encoder.embeddings.norm.{w}", "{p}embeddings.LayerNorm.{w}"),
    ("encoder.layers.{i}.attn.qkv.{w}", tuple(_BERT_LAYER + f"attention.self.{n}.{{w}}" for n in ("query", "key", "value"))),
    ("encoder.layers.{i}.attn.out.{w}", _BERT_LAYER + "attention.output.dense.{w}"),
    ("encoder.layers.{i}.attn_norm.{w}", _BERT_LAYER + "attention.output.LayerNorm.{w}"),
    ("encoder.layers.{i}.ffn.up.{w}", _BERT_LAYER + "intermediate.dense.{w}"),
    ("encoder.layers.{i}.ffn.down.{w}", _BERT_LAYER + "output.dense.{w}"),
    ("encoder.layers.{i}.ffn_norm.{w}", _BERT_LAYER + "output.LayerNorm.{w}"),
    ("classifier.{w}", "classifier.{w}"),
    ("qa_outputs.{w}", "qa_outputs.{w}"),
]
BERT_KEYS = _BERT_BODY + [
    ("head.dense.{w}", "{p}pooler.dense.{w}"),
    ("head.out.{w}", "classifier.{w}"),
    ("transform.{w}", "cls.predictions.transform.dense.{w}"),
    ("norm.{w}", "cls.predictions.transform.LayerNorm.{w}"),
    # Untied (tie_word_embeddings false) the head's own decoder and its bias are what transformers uses;
    # tied, the checkpoint may store only the embeddings and cls.predictions.bias.
    ("decoder_weight", "cls.predictions.decoder.weight"),
    ("decoder_bias", "cls.predictions.decoder.bias"),
    ("decoder_bias", "cls.predictions.bias"),
]
ROBERTA_KEYS = _BERT_BODY + [
    ("head.dense.{w}", "classifier.dense.{w}"),
    ("head.out.{w}", "classifier.out_proj.{w}"),
    ("transform.{w}", "lm_head.dense.{w}"),
    ("norm.{w}", "lm_head.layer_norm.{w}"),
    ("decoder_weight", "lm_head.decoder.weight"),
    ("decoder_bias", "lm_head.decoder.bias"),
    ("decoder_bias", "lm_head.bias"),
]
_DISTIL_LAYER = "{p}transformer.layer.{i}."
DISTILBERT_KEYS = [
    ("encoder.embeddings.word.weight", "{p}embeddings.word_embeddings.weight"),
    ("encoder.embeddings.position.weight", "{p}embeddings.position_embeddings.weight"),
    ("encoder.embeddings.norm.{w}", "{p}embeddings.LayerNorm.{w}"),
    ("encoder.layers.{i}.attn.qkv.{w}", tuple(_DISTIL_LAYER + f"attention.{n}.{{w}}" for n in ("q_lin", "k_lin", "v_lin"))),
    ("encoder.layers.{i}.attn.out.{w}", _DISTIL_LAYER + "attention.out_lin.{w}"),
    ("encoder.layers.{i}.attn_norm.{w}", _DISTIL_LAYER + "sa_layer_norm.{w}"),
    ("encoder.layers.{i}.ffn.up.{w}", _DISTIL_LAYER + "ffn.lin1.{w}"),
    ("encoder.layers.{i}.ffn.down.{w}", _DISTIL_LAYER + "ffn.lin2.{w}"),
    ("encoder.layers.{i}.ffn_norm.{w}", _DISTIL_LAYER + "output_layer_norm.{w}"),
    ("head.dense.{w}", "pre_classifier.{w}"),
    ("head.out.{w}", "classifier.{w}"),
    ("classifier.{w}", "classifier.{w}"),
    ("qa_outputs.{w}", "qa_outputs.{w}"),
    ("transform.{w}", "vocab_transform.{w}"),
    ("norm.{w}", "vocab_layer_norm.{w}"),
    ("decoder_weight", "vocab_projector.weight"),
    ("decoder_bias", "vocab_projector.bias"),
]

# model_type -> (config adapter, key map, base-model prefix, checkpoint keys that carry nothing we need)
FAMILIES = {
    # Untied, transformers' MLM heads add their decoder's bias and leave cls.predictions.bias / lm_head.bias unused.
    "bert": (bert_config, BERT_KEYS, "bert.", (r"position_ids$", r"cls\.predictions\.decoder\.", r"cls\.predictions\.bias$",
                                               r"cls\.seq_relationship\.")),
    "roberta": (bert_config, ROBERTA_KEYS, "roberta.", (r"position_ids$", r"lm_head\.decoder\.", r"lm_head\.bias$",
                                                        r"pooler\.")),
    "distilbert": (distilbert_config, DISTILBERT_KEYS, "distilbert.", (r"position_ids$", r"vocab_projector\.weight$")),
}
