"""Native BERT / RoBERTa / DistilBERT and every head against Hugging Face transformers, loaded from
tiny random checkpoints saved with save_pretrained (no network)."""
import copy
import gc
import weakref

import pytest
import torch

import fastformer as ff
from fastformer.models import block as block_module
from tests.fused_blocks import PYTHON_BLOCK_CHANGES, block_changes, count_op_calls

transformers = pytest.importorskip("transformers")

TINY = dict(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
FAMILIES = {
    "bert": (transformers.BertConfig, dict(TINY, type_vocab_size=2), "Bert"),
    "roberta": (transformers.RobertaConfig, dict(TINY, type_vocab_size=1, pad_token_id=1,
                                                 max_position_embeddings=66), "Roberta"),
    "distilbert": (transformers.DistilBertConfig, dict(vocab_size=99, dim=64, n_layers=2, n_heads=2, hidden_dim=37,
                                                       max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                                       seq_classif_dropout=0.0, qa_dropout=0.0), "DistilBert"),
}
HEADS = {  # transformers class suffix -> (our task, output fields to compare: ours, theirs)
    "Model": ("base", None),
    "ForSequenceClassification": ("sequence-classification", [("logits", "logits")]),
    "ForTokenClassification": ("token-classification", [("logits", "logits")]),
    "ForQuestionAnswering": ("question-answering", [("start_logits", "start_logits"), ("end_logits", "end_logits")]),
    "ForMaskedLM": ("masked-lm", [("logits", "logits")]),
}


def save_tiny(tmp_path, family: str, head: str, **config_overrides):
    config_cls, kwargs, prefix = FAMILIES[family]
    torch.manual_seed(0)
    model = getattr(transformers, prefix + head)(config_cls(**{**kwargs, **config_overrides})).eval()
    with torch.no_grad():  # fresh values for parameters HF initializes to constants (LayerNorm, biases)
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path / f"{family}-{head}"
    model.save_pretrained(path)
    return model, path


def batch(family: str, padded: bool, batch_size=3, seq=13):
    pad = 1 if family == "roberta" else 0
    ids = torch.randint(3, 99, (batch_size, seq))
    mask = torch.ones(batch_size, seq, dtype=torch.long)
    if padded:
        for row, length in enumerate([seq, 7, 1][:batch_size]):
            ids[row, length:] = pad
            mask[row, length:] = 0
    return ids, mask


def assert_close_rel(ours, theirs, rel=1e-4):
    scale = theirs.abs().max().clamp(min=1e-6)
    assert (ours - theirs).abs().max() / scale <= rel, f"max rel diff {((ours - theirs).abs().max() / scale):.3g}"


@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_transformers_fp32(tmp_path, family, head, padded):
    theirs, path = save_tiny(tmp_path, family, head)
    ours = ff.from_pretrained(path)
    task, fields = HEADS[head]
    assert ours.load_report["task"] == task and not ours.load_report["missing"]
    ids, mask = batch(family, padded)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask)
    if fields is None:
        keep = mask.bool()  # padded positions are not outputs anyone reads
        assert_close_rel(got[keep], want.last_hidden_state[keep])
    else:
        for ours_field, their_field in fields:
            g, w = getattr(got, ours_field), getattr(want, their_field)
            if head in ("ForTokenClassification", "ForMaskedLM", "ForQuestionAnswering"):
                g, w = g[mask.bool()], w[mask.bool()]  # per-token outputs: padded positions are not read
            assert_close_rel(g, w)


@pytest.mark.parametrize("num_labels, problem", [(1, None), (3, "multi_label_classification"), (3, None)])
def test_classification_losses_match(tmp_path, num_labels, problem):
    theirs, path = save_tiny(tmp_path, "bert", "ForSequenceClassification", num_labels=num_labels, problem_type=problem)
    ours = ff.from_pretrained(path)
    ids, mask = batch("bert", padded=True)
    labels = (torch.randn(3) if num_labels == 1 else
              torch.randint(0, 2, (3, num_labels)).float() if problem else torch.randint(0, num_labels, (3,)))
    with torch.no_grad():
        assert_close_rel(ours(ids, mask, labels=labels).loss, theirs(input_ids=ids, attention_mask=mask, labels=labels).loss)


def test_token_type_ids_and_qa_loss(tmp_path):
    theirs, path = save_tiny(tmp_path, "bert", "ForQuestionAnswering")
    ours = ff.from_pretrained(path)
    ids, mask = batch("bert", padded=True)
    types = torch.zeros_like(ids)
    types[:, 5:] = 1
    start, end = torch.tensor([1, 2, 40]), torch.tensor([3, 4, 40])  # 40: out of range, ignored
    with torch.no_grad():
        got = ours(ids, mask, token_type_ids=types, start_positions=start, end_positions=end)
        want = theirs(input_ids=ids, attention_mask=mask, token_type_ids=types, start_positions=start, end_positions=end)
    assert_close_rel(got.start_logits, want.start_logits)
    assert_close_rel(got.loss, want.loss)


@pytest.mark.parametrize("pooling", ["mean", "max", "cls_last4"])
def test_other_poolings_build_fresh_heads(tmp_path, pooling):
    _, path = save_tiny(tmp_path, "bert", "Model", num_hidden_layers=4)
    # The checkpoint's pooler is what pooling="cls" would use: with another pooling it is reported unused.
    with pytest.warns(UserWarning, match="newly initialized"), \
            pytest.warns(UserWarning, match=r"weights not used .*\['pooler.dense.bias', 'pooler.dense.weight'\]"):
        model = ff.from_pretrained(path, task="sequence-classification", pooling=pooling)
    ids, mask = batch("bert", padded=True)
    logits = model(ids, mask).logits
    assert logits.shape == (3, 2) and torch.isfinite(logits).all()
    # Padding must not leak into mean/max pooling: changing padded tokens leaves the logits unchanged.
    ids2 = ids.clone()
    ids2[~mask.bool()] = 5
    torch.testing.assert_close(model(ids2, mask).logits, logits)


def test_training_matches_transformers_step_for_step(tmp_path):
    theirs, path = save_tiny(tmp_path, "bert", "ForSequenceClassification")
    ours = ff.from_pretrained(path).train()
    theirs.train()
    ids, mask = batch("bert", padded=True)
    labels = torch.tensor([0, 1, 1])
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=5e-5, weight_decay=0.01)
    opt_theirs = torch.optim.AdamW(theirs.parameters(), lr=5e-5, weight_decay=0.01)
    losses = []
    for _ in range(200):
        for model, opt, out in ((ours, opt_ours, lambda: ours(ids, mask, labels=labels)),
                                (theirs, opt_theirs, lambda: theirs(input_ids=ids, attention_mask=mask, labels=labels))):
            opt.zero_grad()
            loss = out().loss
            loss.backward()
            opt.step()
            losses.append(loss.item())
    ours_l, theirs_l = losses[0::2], losses[1::2]
    assert ours_l[-1] < 0.5 * ours_l[0], "fine-tuning did not reduce the loss"
    for step, (a, b) in enumerate(zip(ours_l, theirs_l)):
        assert abs(a - b) <= 1e-3 * max(1.0, abs(b)), f"step {step}: loss {a} vs transformers {b}"


def test_freeze_helpers(tmp_path):
    _, path = save_tiny(tmp_path, "bert", "ForSequenceClassification")
    model = ff.from_pretrained(path)
    trainable = lambda: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    ff.models.freeze(model, "head")
    assert trainable() and all(not n.startswith("encoder.") for n in trainable())
    ff.models.freeze(model, "top", top_layers=1)
    assert any(n.startswith("encoder.layers.1.") for n in trainable())
    assert not any(n.startswith("encoder.layers.0.") for n in trainable())
    ff.models.freeze(model, "all")
    assert trainable() == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="top_layers"):
        ff.models.freeze(model, "top", top_layers=5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("lengths", [[7], [9, 9], [9, 4, 1]], ids=["one", "unpadded", "padded"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_fused_blocks_equal_the_python_blocks(tmp_path, monkeypatch, family, lengths, precision):
    """An inference forward through the fused encoder op gives the Python blocks' hidden states bit for bit (the op
    runs the same kernels in the same order), dense and packed, fp32, bf16 and int8 (where the CPU runs them)."""
    if precision != "fp32" and ff.nn.cpu_features.missing_for(precision) is not None:
        pytest.skip(ff.nn.cpu_features.missing_for(precision))
    _, path = save_tiny(tmp_path, family, "Model")
    model = ff.from_pretrained(path, quantize=None if precision == "fp32" else precision)
    ids = torch.randint(5, 99, (len(lengths), max(lengths)))
    mask = (torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]).long()
    calls = count_op_calls(monkeypatch, "encoder_block")
    with torch.inference_mode():
        fused = model(ids, attention_mask=mask)
        assert len(calls) == len(model.layers)
        monkeypatch.setattr(block_module.TransformerBlock, "encode_args", lambda self, x: None)
        python = model(ids, attention_mask=mask)
    assert torch.equal(fused, python)



def test_fused_blocks_see_every_change_to_the_model(tmp_path, monkeypatch):
    """The fused op's per-block arguments are kept between forwards (TransformerBlock._fused_args); every kind of
    change to a block after a forward reaches the next one, which equals the Python blocks' bit for bit: a weight
    updated in place, a .data swap, a new parameter, a setting (eps, activation), a state dict loaded, a
    parametrization, a module replaced by one the op does not cover."""
    _, path = save_tiny(tmp_path, "bert", "Model")
    model = ff.from_pretrained(path)
    loaded = {name: torch.randn_like(t) for name, t in model.state_dict().items()}
    ids = torch.randint(5, 99, (2, 6))
    calls = count_op_calls(monkeypatch, "encoder_block")

    def forward(python=False):
        with torch.inference_mode(), monkeypatch.context() as patch:
            if python:
                patch.setattr(block_module.TransformerBlock, "encode_args", lambda self, x: None)
            return model(ids)

    block = block_changes(model.layers[0])
    changes = {**{name: change for name, change in block.items() if name not in PYTHON_BLOCK_CHANGES},
               "activation": lambda: setattr(model.layers[1].ffn, "activation", "relu"),
               "state dict": lambda: model.load_state_dict(loaded),
               **{name: block[name] for name in PYTHON_BLOCK_CHANGES}}
    before, python_layers = forward(), 0
    for name, change in changes.items():
        with torch.no_grad():
            change()
        python_layers = int(name in PYTHON_BLOCK_CHANGES)  # from here on layer 0 runs its Python block
        calls.clear()
        fused = forward()
        assert len(calls) == len(model.layers) - python_layers, name
        assert torch.equal(fused, forward(python=True)) and not torch.equal(fused, before), name
        before = fused



def test_a_model_copies_and_saves_after_inference(tmp_path):
    """After an inference forward the model holds caches in oneDNN's opaque layout (packed weights, the fused blocks'
    arguments); copy.deepcopy and torch.save leave them out, and the copies compute what the model does."""
    _, path = save_tiny(tmp_path, "bert", "Model")
    model = ff.from_pretrained(path)
    ids = torch.randint(5, 99, (2, 6))
    with torch.inference_mode():
        expected = model(ids)
    torch.save(model, tmp_path / "model.pt")
    for copied in (copy.deepcopy(model), torch.load(tmp_path / "model.pt", weights_only=False)):
        with torch.inference_mode():
            assert torch.equal(copied(ids), expected)


def test_a_model_is_freed_without_the_garbage_collector_after_inference(tmp_path):
    """The caches a forward leaves (packed weights, the fused blocks' arguments) make no reference cycle: dropping the
    last reference frees the model and its weights at once, not at a later garbage collection."""
    _, path = save_tiny(tmp_path, "bert", "Model")
    model = ff.from_pretrained(path)
    with torch.inference_mode():
        model(torch.randint(5, 99, (2, 6)))
    block, weight = weakref.ref(model.layers[0]), weakref.ref(model.layers[0].attn.qkv.weight)
    gc.disable()
    try:
        del model
        assert block() is None and weight() is None
    finally:
        gc.enable()

def test_fused_blocks_only_where_they_apply(tmp_path, monkeypatch):
    """The Python blocks run where the fused op does not apply: a gradient to record, training mode, one row of one
    token, forward hooks (on a block, a module in it, every module); the fused op runs under torch.no_grad as under
    inference_mode, with float or int8 linears."""
    _, path = save_tiny(tmp_path, "bert", "Model")
    model = ff.from_pretrained(path)
    calls = count_op_calls(monkeypatch, "encoder_block")

    def fused_calls(net=model, tokens=6, grad=False):
        calls.clear()
        with torch.set_grad_enabled(grad):
            net(torch.randint(5, 99, (2, tokens)))
        return len(calls)

    layers = len(model.layers)
    assert fused_calls() == layers
    assert fused_calls(grad=True) == 0
    assert fused_calls(net=model.train()) == 0
    model.eval()
    assert fused_calls(tokens=1) == layers  # two rows of one token: still a matrix product
    single = ff.from_pretrained(path)
    calls.clear()
    with torch.no_grad():
        single(torch.randint(5, 99, (1, 1)))  # one row: ff.nn.Linear's single-row kernel, not oneDNN
    assert not calls
    if ff.nn.cpu_features.missing_for("int8") is None:
        assert fused_calls(net=ff.from_pretrained(path, quantize="int8")) == layers
    seen = []
    for hooked in (model.layers[0], model.layers[0].ffn.up):  # a hook sees its module run
        handle = hooked.register_forward_hook(lambda module, args, output: seen.append(module))
        assert fused_calls() == layers - 1 and seen[-1] is hooked
        handle.remove()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
    assert fused_calls() == 0  # a global hook sees every module run
    handle.remove()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_embeddings_from_table_rows_equal_the_lookups(tmp_path, family):
    """Positions 0..S-1 and token type 0 (no ids given) are taken as the tables' first rows, bit for bit the
    lookups' sums (RoBERTa's positions, counted past padding, keep the lookups); with a forward hook on the position
    table the lookups run, so the hook fires."""
    _, path = save_tiny(tmp_path, family, "Model")
    embeddings = ff.from_pretrained(path).embeddings
    ids = torch.randint(5, 99, (3, 9))
    with torch.no_grad():
        rows = embeddings(ids)
        looked_up = embeddings(ids, position_ids=embeddings.position_ids(ids),
                               token_type_ids=torch.zeros_like(ids) if embeddings.token_type is not None else None)
        assert torch.equal(rows, looked_up)
        seen = []
        embeddings.position.register_forward_hook(lambda module, args, output: seen.append(module))
        assert torch.equal(embeddings(ids), rows) and seen == [embeddings.position]
