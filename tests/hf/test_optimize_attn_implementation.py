"""The user's attention implementation on optimized models: set_attn_implementation afterwards behaves as
transformers documents (and optimization_report follows it), a model built with a non-default implementation keeps
it, and a second ff.optimize is a no-op that reports the same."""
import copy
import warnings

import pytest
import torch

import fastformer as ff
from tests.hf.test_optimize_attention_maps import BASE_MODELS
from tests.hf.test_optimize import CASES, _Wrapper, _assert_close, _build, _inputs

transformers = pytest.importorskip("transformers")


def _family(cls):
    return next(f for f, c in CASES if c is cls)


def _implementations(model) -> set:
    """The implementation of every config the model's parts read (T5's stacks hold their own copies)."""
    return {m.config._attn_implementation for m in model.modules() if isinstance(m, transformers.PreTrainedModel)}


@pytest.mark.parametrize("name", BASE_MODELS)
def test_set_attn_implementation_after_optimize(name):
    cls = getattr(transformers, name)
    family = _family(cls)
    inputs = _inputs(family, cls)
    eager = _build(family, cls)
    eager.set_attn_implementation("eager")
    optimized = ff.optimize(_build(family, cls))
    report = ff.optimization_report(optimized)
    assert _implementations(optimized) == {"fastformer"} and report["attention"] > 0
    optimized.set_attn_implementation("eager")
    assert _implementations(optimized) == {"eager"}
    assert ff.optimization_report(optimized) == {k: n for k, n in report.items()
                                                 if k not in ("attention", "t5_relative_bias")}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # eager's own maps: no "not fused" note
        _assert_close(optimized(**inputs, output_attentions=True), eager(**inputs, output_attentions=True))
    optimized.set_attn_implementation("sdpa")
    assert _implementations(optimized) == {"sdpa"}
    optimized.set_attn_implementation("fastformer")
    assert _implementations(optimized) == {"fastformer"} and ff.optimization_report(optimized) == report
    with torch.no_grad():
        _assert_close(optimized(**inputs), eager(**inputs))


@pytest.mark.parametrize("name", ["BertModel", "T5Model", "BartModel"])
def test_a_model_built_with_eager_keeps_it(name):
    cls = getattr(transformers, name)
    family = _family(cls)
    inputs = _inputs(family, cls)
    config = copy.deepcopy(_build(family, cls).config)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).eval()
    with torch.no_grad():
        want = model(**inputs)
    with pytest.warns(UserWarning, match="stays on the 'eager' implementation"):
        ff.optimize(model)
    assert _implementations(model) == {"eager"}
    report = ff.optimization_report(model)
    assert "attention" not in report and report["rms_norm" if family == "t5" else "layer_norm"] > 0
    model.set_attn_implementation("fastformer")
    assert ff.optimization_report(model)["attention"] > 0
    with torch.no_grad():
        _assert_close(model(**inputs), want)


@pytest.mark.parametrize("name", ["BertForSequenceClassification", "GPT2LMHeadModel", "T5ForConditionalGeneration",
                                  "BartForConditionalGeneration"])
def test_optimize_twice_is_a_no_op(name):
    cls = getattr(transformers, name)
    family = _family(cls)
    model = ff.optimize(_build(family, cls))
    report, classes = ff.optimization_report(model), [type(m) for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert ff.optimize(model) is model
    assert ff.optimization_report(model) == report and [type(m) for m in model.modules()] == classes
    assert ff.optimization_report(ff.optimize(model, inplace=False)) == report


def test_optimize_twice_inside_a_torch_tree():
    wrapper = ff.optimize(_Wrapper(_build("bert", transformers.BertModel)).eval())
    report = ff.optimization_report(wrapper)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        ff.optimize(wrapper)
    assert ff.optimization_report(wrapper) == report
    wrapper.encoder.set_attn_implementation("sdpa")
    assert "attention" not in ff.optimization_report(wrapper)
