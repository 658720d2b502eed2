"""config.json checks of ff.from_pretrained (fastformer/hf/config_fields.py): a field of the wrong type or out
of range, or a hidden size the heads do not divide, is a CheckpointError naming the file and the field; a
missing size takes transformers' default; configs the native models would run differently are refused."""
import json

import pytest
import torch

import fastformer as ff
from fastformer.hf.checkpoint import CheckpointError
from fastformer.hf.config_fields import FIELDS

transformers = pytest.importorskip("transformers")

CONFIG_CLASSES = {"bert": "BertConfig", "roberta": "RobertaConfig", "distilbert": "DistilBertConfig",
                  "gpt2": "GPT2Config", "t5": "T5Config", "bart": "BartConfig", "marian": "MarianConfig"}
TINY = {  # model_type -> (model class, config kwargs)
    "bert": ("BertModel", dict(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=20, max_position_embeddings=16)),
    "distilbert": ("DistilBertModel", dict(vocab_size=50, dim=64, n_layers=1, n_heads=2, hidden_dim=20,
                                           max_position_embeddings=16)),
    "gpt2": ("GPT2Model", dict(vocab_size=50, n_embd=64, n_layer=1, n_head=2, n_positions=16)),
    "t5": ("T5ForConditionalGeneration", dict(vocab_size=50, d_model=64, d_kv=16, d_ff=20, num_layers=1,
                                              num_heads=2, decoder_start_token_id=0)),
    "bart": ("BartForConditionalGeneration", dict(vocab_size=50, d_model=64, encoder_layers=1, decoder_layers=1,
                                                  encoder_attention_heads=2, decoder_attention_heads=2,
                                                  encoder_ffn_dim=20, decoder_ffn_dim=20, max_position_embeddings=16)),
}


def _save(path, model_type: str, **overrides):
    cls, kwargs = TINY[model_type]
    config = getattr(transformers, CONFIG_CLASSES[model_type])(**{**kwargs, **overrides})
    model = getattr(transformers, cls)(config).eval()
    model.save_pretrained(path)
    return model


def _edit_config(path, **changes):
    """Rewrites path/config.json with `changes` (a value of ... deletes the field)."""
    file = path / "config.json"
    config = json.loads(file.read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    file.write_text(json.dumps(config))


BAD_FIELDS = [  # (model_type, field, value, message)
    ("bert", "num_hidden_layers", -1, "num_hidden_layers must be an integer >= 1, got -1 (int)"),
    ("bert", "hidden_size", "64", "hidden_size must be an integer >= 1, got '64' (str)"),
    ("bert", "num_attention_heads", 2.0, "num_attention_heads must be an integer >= 1, got 2.0 (float)"),
    ("bert", "hidden_dropout_prob", 1.5, "hidden_dropout_prob must be a number in [0, 1], got 1.5"),
    ("bert", "layer_norm_eps", 0, "layer_norm_eps must be a number > 0, got 0"),
    ("distilbert", "n_layers", True, "n_layers must be an integer >= 1, got True (bool)"),
    ("gpt2", "n_layer", 0, "n_layer must be an integer >= 1, got 0"),
    ("gpt2", "n_inner", -5, "n_inner must be an integer >= 1, got -5"),
    ("t5", "d_kv", "16", "d_kv must be an integer >= 1, got '16' (str)"),
    ("t5", "num_decoder_layers", -1, "num_decoder_layers must be an integer >= 1, got -1"),
    ("bart", "decoder_layers", None, "decoder_layers must be an integer >= 1, got None (NoneType)"),
]


@pytest.mark.parametrize("model_type,field,value,message", BAD_FIELDS, ids=[f"{b[0]}-{b[1]}" for b in BAD_FIELDS])
def test_bad_field_names_the_file_and_the_field(tmp_path, model_type, field, value, message):
    _save(tmp_path, model_type)
    _edit_config(tmp_path, **{field: value})
    with pytest.raises(CheckpointError) as info:
        ff.from_pretrained(tmp_path)
    assert str(tmp_path / "config.json") in str(info.value) and message in str(info.value)


@pytest.mark.parametrize("model_type,hidden,heads", [("bert", "hidden_size", "num_attention_heads"),
                                                     ("distilbert", "dim", "n_heads"), ("gpt2", "n_embd", "n_head"),
                                                     ("bart", "d_model", "decoder_attention_heads")])
def test_hidden_size_not_divisible_by_heads_says_so(tmp_path, model_type, hidden, heads):
    _save(tmp_path, model_type)
    _edit_config(tmp_path, **{heads: 5})
    with pytest.raises(CheckpointError, match=f"config.json: {hidden}=64 is not divisible by {heads}=5"):
        ff.from_pretrained(tmp_path)


@pytest.mark.parametrize("model_type", FIELDS)
def test_defaults_are_transformers_defaults(model_type):
    defaults = getattr(transformers, CONFIG_CLASSES[model_type])()
    for field, (_, default) in FIELDS[model_type].items():
        if default is not None:
            assert getattr(defaults, field) == default, field


def test_missing_size_takes_transformers_default(tmp_path):
    """A config.json without hidden_size loads as transformers loads it: with BertConfig's 768."""
    _save(tmp_path, "bert", hidden_size=768, num_attention_heads=12)
    _edit_config(tmp_path, hidden_size=...)
    theirs = transformers.BertModel.from_pretrained(tmp_path).eval()
    assert theirs.config.hidden_size == 768
    ours = ff.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(input_ids=ids).last_hidden_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flag", ["is_decoder", "add_cross_attention"])
def test_bert_decoder_config_is_refused(tmp_path, flag):
    """BERT with is_decoder=true attends causally in transformers; the native encoder would silently not."""
    _save(tmp_path, "bert")
    _edit_config(tmp_path, **{flag: True})
    with pytest.raises(ValueError, match=f"bert with {flag}=true in config.json .* is not supported"):
        ff.from_pretrained(tmp_path)
