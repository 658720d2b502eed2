"""output_attentions=True on an optimized model returns the attention maps (and outputs) transformers' eager
attention returns, for every family, with a one-time note that those calls are not fused."""
import warnings

import pytest
import torch

import fastformer as ff
from fastformer.hf import attention as hf_attention
from tests.hf.test_optimize import CASES, _assert_close, _build, _inputs

transformers = pytest.importorskip("transformers")

BASE_MODELS = ["BertModel", "RobertaModel", "DistilBertModel", "GPT2Model", "T5Model", "BartModel", "MarianModel"]


def _attention_maps(output) -> list:
    return [maps for key, maps in output.items() if key.endswith("attentions")]


@pytest.mark.parametrize("name", BASE_MODELS)
def test_output_attentions_match_eager_transformers(monkeypatch, name):
    cls = getattr(transformers, name)
    family = next(f for f, c in CASES if c is cls)
    inputs = _inputs(family, cls)  # right-padded: the maps show the padding mask
    eager = _build(family, cls)
    eager.set_attn_implementation("eager")
    optimized = ff.optimize(_build(family, cls))
    monkeypatch.setattr(hf_attention, "_warned_about_maps", [])
    with torch.no_grad():
        want = eager(**inputs, output_attentions=True)
        with pytest.warns(UserWarning, match="not fused"):
            got = optimized(**inputs, output_attentions=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the note comes once, and nothing else warns
            optimized(**inputs, output_attentions=True)
        plain_call = optimized(**inputs)
    maps = _attention_maps(got)
    assert [len(m) for m in maps] == [len(m) for m in _attention_maps(want)]
    self_attention_maps = [m for key, m in got.items() if key in ("attentions", "encoder_attentions")]
    assert self_attention_maps and all(len(m) == eager.config.num_hidden_layers for m in self_attention_maps)
    _assert_close(got, want)
    assert not any(key.endswith("attentions") for key in plain_call.keys())
