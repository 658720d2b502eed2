"""Conformance: transformers' own ModelTesterMixin tests (from the transformers source distribution, see
transformers_tests.py) against every family, each run twice: on plain transformers models and on models passed
through ff.optimize as they are built (`model_class(config)` and `from_pretrained` both construct the class).
The per-family testers are ours (tiny configs). Every test that passes without fastformer must pass with it; the
exceptions are EXPECTED_DIFFERENCES, each with its reason. Marked `conformance` (run: pytest -m conformance
tests/hf/conformance; README "Conformance")."""
import unittest

import pytest
import torch

import fastformer as ff
from tests.hf.conformance import transformers_tests

transformers = pytest.importorskip("transformers")
pytestmark = [
    pytest.mark.conformance,
    # Our own notes, provoked on purpose by transformers' tests: models built with attn_implementation="eager"
    # (ff.optimize keeps it, with this warning) and output_attentions=True (answered by eager attention). Both
    # are asserted in tests/hf/test_optimize.py; here they would only repeat once per family.
    pytest.mark.filterwarnings("ignore:ff.optimize.*attention stays on the:UserWarning"),
    pytest.mark.filterwarnings("ignore:fastformer. output_attentions=True runs transformers' eager:UserWarning"),
]

if transformers_tests.missing_reason() is not None:
    pytest.skip(transformers_tests.missing_reason(), allow_module_level=True)
common = transformers_tests.import_common()

# test name -> why it differs on an optimized model (applies to every family).
EXPECTED_DIFFERENCES = {
    "test_sdpa_can_dispatch_non_composite_models": "asserts that a model loaded without attn_implementation runs "
    "'sdpa'; ff.optimize puts 'fastformer' in place of transformers' default (by design: that is the drop-in)",
}

# (family or "*", test name) -> why the test cannot pass in this harness, with or without fastformer (skipped in both).
HARNESS_LIMITS = {
    ("*", "test_generation_tester_mixin_inheritance"): "the sdist has no tests/generation: GenerationTesterMixin is "
    "an empty stand-in (generate is compared token by token in tests/hf/test_optimize.py)",
    ("t5", "test_model_base_model_prefix"): "T5ForConditionalGeneration holds its stacks itself, so its base_model "
    "is the model (fails on plain transformers too)",
}


def optimizing(cls: type) -> type:
    """A subclass of the transformers model class `cls` (same name and module) that ff.optimize's itself when built.
    linear=False: the nn.Linear swap (CPU fp32 inference only) is not part of what this suite covers."""
    def __init__(self, config, *args, **kwargs):
        cls.__init__(self, config, *args, **kwargs)
        ff.optimize(self, linear=False)

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


class FamilyTester:
    """What ModelTesterMixin reads from a model tester: sizes, and a tiny config with random inputs."""
    batch_size, seq_length, vocab_size = 2, 7, 99
    hidden_size, num_hidden_layers, num_attention_heads, intermediate_size = 32, 2, 4, 37
    is_training, num_labels, type_sequence_label_size, num_choices = True, 3, 2, 2

    def __init__(self, parent, config_factory, encoder_decoder: bool = False):
        self.parent, self.config_factory, self.is_encoder_decoder = parent, config_factory, encoder_decoder
        self.encoder_seq_length = self.decoder_seq_length = self.key_length = self.seq_length

    def get_config(self):
        return self.config_factory(self)

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        ids = torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length))
        mask = torch.ones_like(ids)
        mask[0, -2:] = 0
        inputs = {"input_ids": ids, "attention_mask": mask}
        if self.is_encoder_decoder:
            inputs.update(decoder_input_ids=torch.randint(3, self.vocab_size, (self.batch_size, self.seq_length)),
                          decoder_attention_mask=torch.ones_like(ids))
        return config, inputs


def _bert_like(t, config_class, **extra):
    return config_class(vocab_size=t.vocab_size, hidden_size=t.hidden_size, num_hidden_layers=t.num_hidden_layers,
                        num_attention_heads=t.num_attention_heads, intermediate_size=t.intermediate_size,
                        max_position_embeddings=64, num_labels=t.num_labels, **extra)


def _seq2seq(t, config_class):
    return config_class(vocab_size=t.vocab_size, d_model=t.hidden_size, encoder_layers=t.num_hidden_layers,
                        decoder_layers=t.num_hidden_layers, encoder_attention_heads=t.num_attention_heads,
                        decoder_attention_heads=t.num_attention_heads, encoder_ffn_dim=t.intermediate_size,
                        decoder_ffn_dim=t.intermediate_size, max_position_embeddings=64, pad_token_id=1,
                        bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)


# family -> (config factory, encoder-decoder, the model classes tested: the base model and one head)
FAMILIES = {
    "bert": (lambda t: _bert_like(t, transformers.BertConfig), False,
             ("BertModel", "BertForSequenceClassification")),
    "roberta": (lambda t: _bert_like(t, transformers.RobertaConfig, pad_token_id=1), False,
                ("RobertaModel", "RobertaForMaskedLM")),
    "distilbert": (lambda t: transformers.DistilBertConfig(
        vocab_size=t.vocab_size, dim=t.hidden_size, n_layers=t.num_hidden_layers, n_heads=t.num_attention_heads,
        hidden_dim=t.intermediate_size, max_position_embeddings=64, num_labels=t.num_labels), False,
        ("DistilBertModel", "DistilBertForSequenceClassification")),
    "gpt2": (lambda t: transformers.GPT2Config(
        vocab_size=t.vocab_size, n_embd=t.hidden_size, n_layer=t.num_hidden_layers, n_head=t.num_attention_heads,
        n_inner=t.intermediate_size, n_positions=64, bos_token_id=1, eos_token_id=2, pad_token_id=0), False,
        ("GPT2Model", "GPT2LMHeadModel")),
    "t5": (lambda t: transformers.T5Config(
        vocab_size=t.vocab_size, d_model=t.hidden_size, d_kv=8, d_ff=t.intermediate_size,
        num_layers=t.num_hidden_layers, num_heads=t.num_attention_heads, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0), True, ("T5Model", "T5ForConditionalGeneration")),
    "bart": (lambda t: _seq2seq(t, transformers.BartConfig), True, ("BartModel", "BartForConditionalGeneration")),
    "marian": (lambda t: _seq2seq(t, transformers.MarianConfig), True, ("MarianModel", "MarianMTModel")),
}


def _test_case(family: str, optimized: bool) -> type:
    config_factory, encoder_decoder, class_names = FAMILIES[family]
    classes = tuple(getattr(transformers, n) for n in class_names)

    def setUp(self):
        self.model_tester = FamilyTester(self, config_factory, encoder_decoder)

    attrs = {"all_model_classes": tuple(map(optimizing, classes)) if optimized else classes, "setUp": setUp,
             "is_encoder_decoder": encoder_decoder, "test_torch_exportable": False}
    skips = {name: f"harness: {reason}" for (where, name), reason in HARNESS_LIMITS.items() if where in ("*", family)}
    if optimized:
        skips.update({name: f"expected difference: {reason}" for name, reason in EXPECTED_DIFFERENCES.items()})
    for name, reason in skips.items():
        attrs[name] = unittest.skip(reason)(lambda self: None)
    return type(f"Test{family.title()}{'Optimized' if optimized else 'Plain'}", (common.ModelTesterMixin,
                                                                                  unittest.TestCase), attrs)


for _family in FAMILIES:
    for _optimized in (False, True):
        _case = _test_case(_family, _optimized)
        globals()[_case.__name__] = _case
del _family, _optimized, _case
