"""ff.from_pretrained rejects what is not a usable checkpoint with a clear error."""
import json

import pytest

import fastformer as ff
from fastformer.hf.checkpoint import CheckpointError

transformers = pytest.importorskip("transformers")


def test_not_a_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a folder"):
        ff.from_pretrained(tmp_path / "missing")


def test_no_config(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        ff.from_pretrained(tmp_path)


def test_bad_json_and_unsupported_type(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        ff.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ValueError, match="unsupported model_type 'mamba'"):
        ff.from_pretrained(tmp_path)


def test_corrupt_or_missing_weights(tmp_path):
    config = transformers.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20)
    config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has no weights"):
        ff.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="could not read weights"):
        ff.from_pretrained(tmp_path)


def test_bad_model_inputs_name_the_argument(tmp_path):
    import torch

    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=20,
                                                   max_position_embeddings=16)).save_pretrained(tmp_path)
    model = ff.from_pretrained(tmp_path)
    ids = torch.randint(0, 50, (2, 8))
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        model(ids, torch.ones(2, 7))
    with pytest.raises(ValueError, match="token_type_ids must have the shape"):
        model(ids, token_type_ids=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="need 17 positions, the model has 16"):
        model(torch.randint(0, 50, (1, 17)))
    with pytest.raises(ValueError, match="input_ids must be a non-empty"):
        model(torch.zeros(0, 8, dtype=torch.long))


def test_unknown_task(tmp_path):
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=20)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        ff.from_pretrained(tmp_path, task="summarize")
