"""GPT-2: Hugging Face config -> ModelConfig, and its key map (Conv1D weights are stored [in, out]
and c_attn is already the fused QKV projection in q, k, v order)."""
from fastformer.hf.encoders import _labels
from fastformer.hf.keymap import Transposed
from fastformer.models.config import ModelConfig
from fastformer.nn.activation import activation_name


def gpt2_config(hf: dict) -> ModelConfig:
    if hf.get("add_cross_attention"):
        raise ValueError("GPT-2 with add_cross_attention=true is not supported")
    # reorder_and_upcast_attn only makes transformers compute the scores in fp32, which our attention
    # kernels always do, so it needs nothing here.
    hidden = hf["n_embd"]
    return ModelConfig(
        model_type="gpt2", vocab_size=hf["vocab_size"], hidden_size=hidden, num_layers=hf["n_layer"],
        num_heads=hf["n_head"], intermediate_size=hf.get("n_inner") or 4 * hidden,
        activation=activation_name(hf.get("activation_function", "gelu_new"), "activation_function"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pre_norm=True, embedding_norm=False, max_positions=hf.get("n_positions", 1024), type_vocab_size=0,
        pad_token_id=hf.get("pad_token_id"), embedding_padding_idx=False,
        attention_scale=hf.get("scale_attn_weights", True),
        attention_scale_by_layer=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
        dropout=hf.get("resid_pdrop", 0.1),
        attention_dropout=hf.get("attn_pdrop", 0.1), classifier_dropout=hf.get("summary_first_dropout"),
        extra={"eos_token_id": hf.get("eos_token_id"), "bos_token_id": hf.get("bos_token_id"),
               "tie_word_embeddings": hf.get("tie_word_embeddings", True)},
        **_labels(hf))


_LAYER = "{p}h.{i}."
GPT2_KEYS = [
    ("decoder.embeddings.word.weight", "{p}wte.weight"),
    ("decoder.embeddings.position.weight", "{p}wpe.weight"),
    ("decoder.layers.{i}.attn_norm.{w}", _LAYER + "ln_1.{w}"),
    ("decoder.layers.{i}.attn.qkv.{w}", Transposed(_LAYER + "attn.c_attn.{w}")),
    ("decoder.layers.{i}.attn.out.{w}", Transposed(_LAYER + "attn.c_proj.{w}")),
    ("decoder.layers.{i}.ffn_norm.{w}", _LAYER + "ln_2.{w}"),
    ("decoder.layers.{i}.ffn.up.{w}", Transposed(_LAYER + "mlp.c_fc.{w}")),
    ("decoder.layers.{i}.ffn.down.{w}", Transposed(_LAYER + "mlp.c_proj.{w}")),
    ("decoder.final_norm.{w}", "{p}ln_f.{w}"),
    ("lm_head.weight", "lm_head.weight"),
    ("lm_head.weight", "{p}wte.weight"),  # tied: checkpoints that tie the head do not store it
    ("score.weight", "score.weight"),
]

# model_type -> (config adapter, key map, base-model prefix, checkpoint keys that carry nothing we need)
FAMILIES = {
    "gpt2": (gpt2_config, GPT2_KEYS, "transformer.", (r"\.attn\.bias$", r"\.attn\.masked_bias$")),
}
