"""ff.optimize on padded batches: BERT/RoBERTa/DistilBERT sequence classifiers run their encoder on the real tokens only
(fastformer.hf.packed_encoder), matching transformers for many padding ratios."""
import pytest
import torch
import transformers

import fastformer as ff

LENGTHS = [[16, 1, 9, 3], [5, 12, 16, 7], [1, 16], [16, 16], [1], [2, 1, 1]]
BERT_SIZES = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {"bert": (transformers.BertForSequenceClassification, transformers.BertConfig(**BERT_SIZES)),
            "roberta": (transformers.RobertaForSequenceClassification, transformers.RobertaConfig(**BERT_SIZES)),
            "distilbert": (transformers.DistilBertForSequenceClassification, transformers.DistilBertConfig(
                vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, dropout=0.0, attention_dropout=0.0,
                seq_classif_dropout=0.0))}


def _pair(family, model_cls=None):
    default_cls, config = FAMILIES[family]
    model_cls = model_cls or default_cls
    torch.manual_seed(0)
    reference = model_cls(config).eval()
    optimized = model_cls(config).eval()
    optimized.load_state_dict(reference.state_dict())
    ff.optimize(optimized)
    return reference, optimized


def _batch(lengths):
    ids = torch.randint(4, 100, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return ids, mask


@pytest.mark.parametrize("lengths", LENGTHS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_padded_batch_matches_transformers(family, lengths, varlen_calls):
    reference, optimized = _pair(family)
    ids, mask = _batch(lengths)
    with torch.no_grad():
        expected, got = reference(input_ids=ids, attention_mask=mask), optimized(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4 * expected.logits.abs().max())
    padded = bool((mask == 0).any())
    assert len(varlen_calls) == (2 if padded else 0)  # one per layer, only when something is padded
    with torch.no_grad():  # hidden states requested: the dense path, every position as transformers gives it
        dense = optimized(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    want = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1].detach()
    torch.testing.assert_close(dense.hidden_states[-1], want, rtol=1e-4, atol=1e-5)


def test_multiple_choice_matches_transformers(varlen_calls):
    reference, optimized = _pair("distilbert", transformers.DistilBertForMultipleChoice)
    ids, mask = _batch([16, 1, 9, 3, 12, 5])
    ids, mask = ids.view(2, 3, 16), mask.view(2, 3, 16)  # 2 questions x 3 choices
    with torch.no_grad():
        expected, got = reference(input_ids=ids, attention_mask=mask), optimized(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4 * expected.logits.abs().max())
    assert len(varlen_calls) == 2


@pytest.mark.parametrize("family,embeddings", [("bert", "bert.embeddings.word_embeddings.weight"),
                                               ("distilbert", "distilbert.embeddings.word_embeddings.weight")])
def test_gradients_match_transformers_with_checkpointing(family, embeddings, varlen_calls):
    reference, optimized = _pair(family)
    ids, mask = _batch([16, 1, 9, 3])
    labels = torch.tensor([0, 1, 1, 0])
    for model in (reference, optimized):
        model.train()
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    assert varlen_calls
    for name in ("classifier.weight", embeddings):
        torch.testing.assert_close(optimized.get_parameter(name).grad, reference.get_parameter(name).grad,
                                   rtol=1e-4, atol=1e-6)


PER_TOKEN = [("bert", transformers.BertModel), ("bert", transformers.BertForTokenClassification),
             ("roberta", transformers.RobertaForMaskedLM), ("distilbert", transformers.DistilBertModel),
             ("distilbert", transformers.DistilBertForQuestionAnswering)]


@pytest.mark.parametrize("family,model_cls", PER_TOKEN, ids=[c.__name__ for _, c in PER_TOKEN])
def test_models_showing_padded_positions_pack_only_when_asked(family, model_cls, varlen_calls):
    """Default: dense, transformers' values everywhere. pack_padding=True: transformers' values on real positions;
    hidden states at padded ones are zeros (per-token logits there: the head applied to zeros)."""
    reference, dense = _pair(family, model_cls)
    packed = model_cls(reference.config).eval()
    packed.load_state_dict(reference.state_dict())
    assert ff.optimization_report(dense).get("packed_encoder", 0) == 0
    assert ff.optimization_report(ff.optimize(packed, pack_padding=True))["packed_encoder"] == 1
    ids, mask = _batch([16, 1, 9, 3])
    real = mask.bool()
    with torch.no_grad():
        want, got_dense = reference(input_ids=ids, attention_mask=mask), dense(input_ids=ids, attention_mask=mask)
        assert not varlen_calls
        got = packed(input_ids=ids, attention_mask=mask, output_hidden_states=False)
        assert len(varlen_calls) == 2
    for key in ("last_hidden_state", "logits", "start_logits", "end_logits"):
        if key in want:
            torch.testing.assert_close(got_dense[key], want[key], rtol=1e-4, atol=1e-4 * want[key].abs().max())
            torch.testing.assert_close(got[key][real], want[key][real], rtol=1e-4,
                                       atol=1e-4 * want[key].abs().max())
    if "last_hidden_state" in want:
        assert not got.last_hidden_state[~real].any()


def test_pack_padding_false_and_causal_decoders_stay_dense(varlen_calls):
    reference, _ = _pair("bert")
    classifier = transformers.BertForSequenceClassification(reference.config).eval()
    assert ff.optimization_report(ff.optimize(classifier, pack_padding=False)).get("packed_encoder", 0) == 0
    ids, mask = _batch([16, 1, 9, 3])
    with torch.no_grad():
        classifier(input_ids=ids, attention_mask=mask)
    assert not varlen_calls
    decoder_config = transformers.BertConfig(**BERT_SIZES, is_decoder=True)
    decoder = ff.optimize(transformers.BertLMHeadModel(decoder_config), pack_padding=True)
    assert ff.optimization_report(decoder).get("packed_encoder", 0) == 0  # varlen would drop its causal mask
    with pytest.raises(TypeError, match="pack_padding"):
        ff.optimize(classifier, pack_padding="yes")
