"""Native GPT-2 (causal LM, sequence classification, bare body) against Hugging Face transformers,
loaded from tiny random checkpoints (no network)."""
import copy
import importlib
import types

import pytest
import torch

import fastformer as ff
from fastformer.models import decoder as decoder_module
from fastformer.nn import linear as linear_module
from tests.fused_blocks import PYTHON_BLOCK_CHANGES, block_changes, count_op_calls
from tests.gpt2_tiny import left_padded_prompts, save_tiny_gpt2

transformers = pytest.importorskip("transformers")
gemv_module = importlib.import_module("fastformer.ops.gemv")
fused_decode = importlib.import_module("fastformer.ops.decode_block")


def assert_close_rel(ours, theirs, rel=1e-4):
    scale = theirs.abs().max().clamp(min=1e-6)
    assert (ours - theirs).abs().max() / scale <= rel, f"max rel diff {((ours - theirs).abs().max() / scale):.3g}"


def right_padded(lengths, seq, pad):
    ids = torch.randint(3, 97, (len(lengths), seq))
    mask = (torch.arange(seq)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, pad), mask


@pytest.mark.parametrize("padding", ["none", "right", "left"])
@pytest.mark.parametrize("head, task", [("LMHeadModel", "causal-lm"), ("ForSequenceClassification",
                                                                      "sequence-classification"), ("Model", "base")])
def test_matches_transformers_fp32(tmp_path, head, task, padding):
    theirs = save_tiny_gpt2(tmp_path, head, pad_token_id=0, num_labels=3)
    ours = ff.from_pretrained(tmp_path)
    assert ours.load_report["task"] == task and not ours.load_report["missing"]
    assert not ours.load_report["unexpected"]
    lengths = [17, 9, 1]
    if padding == "none":
        ids, mask = right_padded([17] * 3, 17, 0)
    else:
        ids, mask = (right_padded if padding == "right" else left_padded_prompts)(lengths, 17, pad=0)
    with torch.no_grad():
        want = theirs(input_ids=ids, attention_mask=mask)
        got = ours(ids, attention_mask=mask)
    keep = mask.bool()  # padded positions are not outputs anyone reads
    if head == "Model":
        assert_close_rel(got[keep], want.last_hidden_state[keep])
    elif head == "LMHeadModel":
        assert_close_rel(got.logits[keep], want.logits[keep])
    else:  # pooled at each row's last non-padding token
        assert_close_rel(got.logits, want.logits)


def test_causal_lm_loss_and_position_ids(tmp_path):
    theirs = save_tiny_gpt2(tmp_path)
    ours = ff.from_pretrained(tmp_path)
    ids, mask = left_padded_prompts([11, 6], 11)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        got = ours(ids, mask, position_ids=positions, labels=labels)
        want = theirs(input_ids=ids, attention_mask=mask, position_ids=positions, labels=labels)
    assert_close_rel(got.logits[mask.bool()], want.logits[mask.bool()])
    assert_close_rel(got.loss, want.loss)


def test_tied_and_untied_lm_head(tmp_path):
    save_tiny_gpt2(tmp_path / "tied")
    tied = ff.from_pretrained(tmp_path / "tied")
    assert tied.lm_head.weight is tied.decoder.embeddings.word.weight
    theirs = save_tiny_gpt2(tmp_path / "untied", tie_word_embeddings=False)
    untied = ff.from_pretrained(tmp_path / "untied")
    assert untied.lm_head.weight is not untied.decoder.embeddings.word.weight
    ids = torch.randint(3, 97, (2, 7))
    with torch.no_grad():
        assert_close_rel(untied(ids).logits, theirs(input_ids=ids).logits)


def test_decode_step_streams_each_weight_in_place(tmp_path, monkeypatch):
    """A batch-1 decode step hands its kernels every linear's own weight (the blocks' through the fused decode op,
    the LM head's, the tied embedding itself, through the single-row kernel): no weight is copied, transposed or
    repacked per token (GPT-2-small's LM head is 154 MB)."""
    save_tiny_gpt2(tmp_path)
    model = ff.from_pretrained(tmp_path)
    streamed = []
    real_gemv, real_block = gemv_module._ops.gemv.default, fused_decode._ops.decode_block.default

    def block(*args):  # the schema's order: qkv, out, up and down weights are arguments 7, 9, 13, 15
        streamed.extend(args[i] for i in (7, 9, 13, 15))
        return real_block(*args)

    monkeypatch.setattr(gemv_module, "_ops", types.SimpleNamespace(gemv=types.SimpleNamespace(
        default=lambda x, weight, bias: streamed.append(weight) or real_gemv(x, weight, bias))))
    monkeypatch.setattr(fused_decode, "_ops", types.SimpleNamespace(decode_block=types.SimpleNamespace(default=block)))
    with torch.inference_mode():
        cache = model.new_cache(1, 8)
        model.step(torch.tensor([[5, 6, 7]]), cache, last_only=True)
        streamed.clear()
        model.step(torch.tensor([[8]]), cache, last_only=True)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]  # qkv, out, up, down per layer; head
    assert len(streamed) == len(linears) == 4 * len(model.decoder.layers) + 1
    for weight, linear in zip(streamed, linears):
        assert weight.data_ptr() == linear.weight.data_ptr() and weight.stride() == linear.weight.stride()
    assert streamed[-1].data_ptr() == model.decoder.embeddings.word.weight.data_ptr()


def python_blocks_only(monkeypatch):
    monkeypatch.setattr(decoder_module.Decoder, "_decodes_one_token", lambda self, x, cache: False)


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "relu", "silu"])
@pytest.mark.parametrize("padded", [False, True], ids=["plain", "left-padded"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_decode_step_equals_the_python_blocks(tmp_path, monkeypatch, activation, padded, precision):
    """Decode steps through the fused op give the Python blocks' logits and KV cache bit for bit (the op runs the
    same kernels in the same order), for every activation it covers, a left-padded prompt, fp32 and bf16."""
    if precision == "bf16" and ff.nn.cpu_features.missing_for("bf16") is not None:
        pytest.skip(ff.nn.cpu_features.missing_for("bf16"))
    save_tiny_gpt2(tmp_path, activation_function=activation, noise=0.3)
    model = ff.from_pretrained(tmp_path, quantize=None if precision == "fp32" else precision)
    ids, mask = left_padded_prompts([5], 9) if padded else (torch.randint(3, 97, (1, 6)), None)
    new_tokens = torch.randint(3, 97, (1, 7))

    def decode():
        with torch.inference_mode():
            cache = model.new_cache(1, 20)
            logits = [model.step(ids, cache, mask, last_only=True)]
            logits += [model.step(new_tokens[:, t:t + 1], cache) for t in range(new_tokens.shape[1])]
        return torch.cat(logits, dim=1), cache

    calls = count_op_calls(monkeypatch, "decode_block")
    fused, fused_cache = decode()
    assert len(calls) == len(model.decoder.layers) * new_tokens.shape[1]
    python_blocks_only(monkeypatch)
    python, python_cache = decode()
    assert torch.equal(fused, python)
    assert torch.equal(fused_cache.keys, python_cache.keys) and torch.equal(fused_cache.values, python_cache.values)



def test_fused_decode_sees_every_change_to_the_model(tmp_path, monkeypatch):
    """The fused op's per-block arguments are kept between steps (TransformerBlock._fused_args); a change to a block
    between two decode steps reaches the next step, whose logits equal the Python blocks' bit for bit: a weight
    updated in place, a .data swap, a new parameter, a setting (eps), a parametrization, a module the op does not
    cover."""
    save_tiny_gpt2(tmp_path, noise=0.3)
    model = ff.from_pretrained(tmp_path)
    changes = block_changes(model.decoder.layers[0])
    calls = count_op_calls(monkeypatch, "decode_block")

    def step(cache, token, python=False):
        with torch.inference_mode(), monkeypatch.context() as patch:
            if python:
                python_blocks_only(patch)
            return model.step(token, cache)

    with torch.inference_mode():
        cache = model.new_cache(1, 4 + 2 * len(changes))
        model.step(torch.randint(3, 97, (1, 4)), cache)
    for name, change in changes.items():
        step(cache, torch.randint(3, 97, (1, 1)))  # builds (or reuses) the arguments
        with torch.no_grad():
            change()
        token = torch.randint(3, 97, (1, 1))
        python_cache = copy.deepcopy(cache)
        calls.clear()
        fused = step(cache, token)
        assert len(calls) == len(model.decoder.layers) - (name in PYTHON_BLOCK_CHANGES), name
        assert torch.equal(fused, step(python_cache, token, python=True)), name

def test_fused_decode_only_where_it_applies(tmp_path, monkeypatch):
    """The Python blocks run where the fused op does not apply: a gradient to record, training mode, more than one
    row, a prefill, another backend, int8 linears, bf16 where ff.nn.Linear does not run it on its kernels; the fused
    op runs under torch.no_grad as under inference_mode."""
    save_tiny_gpt2(tmp_path)
    model = ff.from_pretrained(tmp_path)
    calls = count_op_calls(monkeypatch, "decode_block")

    def fused_calls(rows=1, grad=False, quantized=None):
        calls.clear()
        net = quantized or model
        with torch.set_grad_enabled(grad):
            cache = net.new_cache(rows, 8)
            net.step(torch.randint(3, 97, (rows, 3)), cache)
            net.step(torch.randint(3, 97, (rows, 1)), cache)
        return len(calls)

    layers = len(model.decoder.layers)
    assert fused_calls() == layers  # no_grad: only the one-token step
    assert fused_calls(grad=True) == 0
    assert fused_calls(rows=2) == 0
    model.train()
    assert fused_calls() == 0
    model.eval()
    monkeypatch.setenv("FASTFORMER_BACKEND", "reference")
    assert fused_calls() == 0
    monkeypatch.delenv("FASTFORMER_BACKEND")
    if ff.nn.cpu_features.missing_for("int8") is None:
        assert fused_calls(quantized=ff.from_pretrained(tmp_path, quantize="int8")) == 0
    if ff.nn.cpu_features.missing_for("bf16") is None:
        assert fused_calls(quantized=ff.from_pretrained(tmp_path, quantize="bf16")) == layers
        # Without native bf16 dot products ff.nn.Linear keeps F.linear for bf16 rows; so does the block.
        monkeypatch.setattr(linear_module, "_packs", lambda dtype: dtype == torch.float32)
        assert fused_calls(quantized=ff.from_pretrained(tmp_path).to(torch.bfloat16)) == 0


def test_sequence_classification_needs_pad_token_for_batches(tmp_path):
    theirs = save_tiny_gpt2(tmp_path, "ForSequenceClassification")  # no pad_token_id
    ours = ff.from_pretrained(tmp_path)
    one = torch.randint(3, 97, (1, 5))
    with torch.no_grad():
        assert_close_rel(ours(one).logits, theirs(input_ids=one).logits)
    with pytest.raises(ValueError, match="pad_token_id"):
        ours(torch.randint(3, 97, (2, 5)))


def test_cross_attention_config_is_refused(tmp_path):
    save_tiny_gpt2(tmp_path, add_cross_attention=True)
    with pytest.raises(ValueError, match="add_cross_attention"):
        ff.from_pretrained(tmp_path)


def test_bad_inputs(tmp_path):
    save_tiny_gpt2(tmp_path)
    model = ff.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="longer|positions"):
        model(torch.randint(3, 97, (1, 49)))  # n_positions is 48
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.randint(3, 97, (2, 5)), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.randint(3, 97, (1, 4)), position_ids=torch.tensor([[0, 1, 2, 48]]))
    with pytest.raises(ValueError, match="task must be one of"):
        ff.from_pretrained(tmp_path, task="masked-lm")
