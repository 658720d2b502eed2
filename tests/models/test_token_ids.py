"""Token ids outside the vocabulary, or not integers, are errors naming the argument (fastformer/_token_ids.py)
in every native family's forward and in generate(), instead of torch's bare IndexError."""
import pytest
import torch

import fastformer as ff
from fastformer._token_ids import check_token_ids
from tests.bert_tiny import TINY_BERT, save_tiny_bert
from tests.gpt2_tiny import TINY_GPT2, save_tiny_gpt2
from tests.seq2seq_checkpoints import VOCAB as SEQ2SEQ_VOCAB, save_tiny

pytest.importorskip("transformers")


ENCODERS = {  # RoBERTa and DistilBERT as tiny transformers configs (BERT's comes from tests/bert_tiny.py)
    "roberta": ("RobertaConfig", "RobertaForMaskedLM", dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                            intermediate_size=8, max_position_embeddings=20)),
    "distilbert": ("DistilBertConfig", "DistilBertForMaskedLM", dict(dim=16, n_layers=1, n_heads=2, hidden_dim=8,
                                                                    max_position_embeddings=20)),
}
ENCODER_VOCAB = 37
SEQ2SEQ_FAMILIES = ("t5", "bart", "marian")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{family: (model, vocab size)}: the seven families (encoders; GPT-2; T5 / BART / Marian, the encoder and
    the decoder embeddings)."""
    import transformers

    root = tmp_path_factory.mktemp("token_ids")
    save_tiny_bert(root / "bert", tokenizer=False)
    save_tiny_gpt2(root / "gpt2")
    found = {"bert": (ff.from_pretrained(root / "bert"), TINY_BERT["vocab_size"]),
             "gpt2": (ff.from_pretrained(root / "gpt2"), TINY_GPT2["vocab_size"])}
    for family, (config_class, model_class, config) in ENCODERS.items():
        getattr(transformers, model_class)(getattr(transformers, config_class)(
            vocab_size=ENCODER_VOCAB, **config)).save_pretrained(root / family)
        found[family] = (ff.from_pretrained(root / family), ENCODER_VOCAB)
    for family in SEQ2SEQ_FAMILIES:
        found[family] = (ff.from_pretrained(save_tiny(root, family)[1]), SEQ2SEQ_VOCAB)
    return found


def _forward(model, family, ids, decoder_ids=None):
    if family in SEQ2SEQ_FAMILIES:
        return model(ids, decoder_input_ids=ids[:, :2] if decoder_ids is None else decoder_ids)
    return model(ids)


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "gpt2", "t5", "bart", "marian"])
def test_forward_rejects_ids_outside_the_vocabulary(models, family):
    model, vocab = models[family]
    ids = torch.randint(3, vocab, (2, 5))
    with torch.no_grad():
        _forward(model, family, ids)  # in range: runs
        for bad in (vocab, -1):
            with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {vocab}\) .* got token id {bad}$"):
                _forward(model, family, ids.index_put((torch.tensor([1]), torch.tensor([3])), torch.tensor(bad)))
        with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor of token ids, got torch.float32"):
            _forward(model, family, ids.float())


@pytest.mark.parametrize("family", SEQ2SEQ_FAMILIES)
def test_decoder_input_ids_are_checked_too(models, family):
    model, vocab = models[family]
    ids = torch.randint(3, vocab, (2, 5))
    with torch.no_grad(), pytest.raises(ValueError, match=rf"decoder_input_ids must lie in \[0, {vocab}\)"):
        _forward(model, family, ids, decoder_ids=torch.full((2, 3), vocab + 7))


@pytest.mark.parametrize("family", ["gpt2", *SEQ2SEQ_FAMILIES])
def test_generate_rejects_ids_outside_the_vocabulary(models, family):
    model, vocab = models[family]
    ids = torch.randint(3, vocab, (2, 5))
    ids[0, 2] = vocab + 100
    with pytest.raises(ValueError, match=rf"input_ids must lie in \[0, {vocab}\) .* got token id {vocab + 100}"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        model.generate(ids.clamp(max=vocab - 1).double(), max_new_tokens=2)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_token_type_ids_outside_the_type_vocabulary_are_named(models, family):
    model, vocab = models[family]
    ids = torch.randint(3, vocab, (2, 5))
    types = torch.zeros_like(ids)
    with torch.no_grad():
        model(ids, token_type_ids=types.index_fill(1, torch.tensor([2]), 1 if family == "bert" else 0))  # in range
        with pytest.raises(ValueError, match=r"token_type_ids must lie in \[0, \d\) \(the model's type_vocab_size\), "
                                             r"got token id 7"):
            model(ids, token_type_ids=types.index_fill(1, torch.tensor([2]), 7))


def test_forward_on_a_gpu_reads_no_values_back():
    """Off the CPU only generate() checks the range (on_any_device): a forward's check must not synchronize.
    A meta tensor has no values: reading them back would raise."""
    ids = torch.empty(2, 5, dtype=torch.long, device="meta")
    check_token_ids(ids, 10)
    with pytest.raises(TypeError, match="input_ids must be an int64 or int32 tensor"):
        check_token_ids(ids.float(), 10)
    with pytest.raises(Exception):
        check_token_ids(ids, 10, on_any_device=True)
