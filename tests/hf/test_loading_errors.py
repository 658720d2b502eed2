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


def test_unknown_task(tmp_path):
    transformers.BertModel(transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=20)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="task must be one of"):
        ff.from_pretrained(tmp_path, task="summarize")
