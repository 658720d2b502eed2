"""quantize="int8" / "bf16" through ff.from_pretrained and ff.optimize: the quantized twin keeps the fp32 model's
API (heads, generate, stream) and stays within measured accuracy bounds of it; errors for what cannot run."""
import pytest
import torch

import fastformer as ff
from fastformer.nn import cpu_features
from fastformer.nn.int8_linear import Int8Linear
from tests.bert_tiny import save_tiny_bert
from tests.gpt2_tiny import save_tiny_gpt2
from tests.seq2seq_checkpoints import save_tiny

transformers = pytest.importorskip("transformers")

# Relative error max|q - fp32| / max|fp32| of the tiny models' outputs, measured 0.008-0.030 (int8) and
# 0.003-0.017 (bf16, logits rounded to bf16 included).
BOUNDS = {"int8": 0.05, "bf16": 0.03}


def runnable(mode):
    missing = cpu_features.missing_for(mode)
    skip = pytest.mark.skipif(missing is not None, reason=f"{mode} cannot run here: {missing}")
    return pytest.param(mode, marks=skip)


MODES = [runnable("int8"), runnable("bf16")]


def relative_error(got, want):
    return ((got.float() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("head, output", [("ForSequenceClassification", "logits"), ("ForTokenClassification", "logits"),
                                          ("Model", None)])
def test_bert_heads_within_bound(tmp_path, mode, head, output):
    save_tiny_bert(tmp_path, head, tokenizer=False, num_labels=3)
    ids = torch.randint(5, 99, (3, 23))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    with torch.no_grad():
        want = ff.from_pretrained(tmp_path)(ids, mask)
        model = ff.from_pretrained(tmp_path, quantize=mode)
        got = model(ids, mask)
    if output is not None:
        want, got = getattr(want, output), getattr(got, output)
    keep = mask.bool() if got.dim() == 3 else slice(None)
    assert relative_error(got[keep], want[keep]) <= BOUNDS[mode]
    assert model.quantization == mode and f"quantization='{mode}'" in repr(model)
    if mode == "int8":
        assert "Int8Linear" in repr(model) and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    else:
        assert all(p.dtype == torch.bfloat16 for p in model.parameters())


@pytest.mark.parametrize("mode", MODES)
def test_gpt2_generate_and_stream(tmp_path, mode, capsys):
    save_tiny_gpt2(tmp_path, noise=0.2)
    ids = torch.randint(3, 97, (2, 9))
    fp32 = ff.from_pretrained(tmp_path)
    model = ff.from_pretrained(tmp_path, quantize=mode)
    with torch.no_grad():
        assert relative_error(model(ids).logits, fp32(ids).logits) <= BOUNDS[mode]
    want = fp32.generate(ids, max_new_tokens=16)
    got = model.generate(ids, max_new_tokens=16)
    assert got.shape == want.shape and torch.equal(got[:, :9], ids)
    streamed = torch.cat(list(model.stream(ids[:1], max_new_tokens=16)), dim=-1)
    assert torch.equal(streamed.flatten(), got[0, 9:])
    agreement = (got[:, 9:] == want[:, 9:]).float().mean().item()
    with capsys.disabled():
        print(f"\n[{mode}] tiny GPT-2 greedy tokens equal to fp32: {agreement:.0%} of 32")


@pytest.mark.parametrize("mode", MODES)
def test_t5_generate(tmp_path, mode):
    _, path = save_tiny(tmp_path, "t5")
    ids = torch.randint(3, 98, (2, 11))
    fp32 = ff.from_pretrained(path)
    model = ff.from_pretrained(path, quantize=mode)
    with torch.no_grad():
        assert relative_error(model(ids, decoder_input_ids=ids[:, :5]).logits,
                              fp32(ids, decoder_input_ids=ids[:, :5]).logits) <= BOUNDS[mode]
    got = model.generate(ids, max_new_tokens=8)
    assert got.shape[0] == 2 and got.shape == fp32.generate(ids, max_new_tokens=8).shape


@pytest.mark.parametrize("mode", MODES)
def test_optimize_hf_gpt2_conv1d_and_bert(mode):
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_embd=64, n_layer=2, n_head=2,
                                                                n_positions=32)).eval()
    bert = transformers.BertModel(transformers.BertConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2,
                                                          num_attention_heads=2, intermediate_size=37)).eval()
    for model, out in ((gpt2, "logits"), (bert, "last_hidden_state")):
        ids = torch.randint(3, 97, (2, 13))
        with torch.no_grad():
            want = getattr(model(input_ids=ids), out)
            optimized = ff.optimize(model, inplace=False, quantize=mode)
            got = getattr(optimized(input_ids=ids), out)
        assert relative_error(got, want) <= BOUNDS[mode]
        report = ff.optimization_report(optimized)
        if mode == "int8":  # GPT-2: 4 Conv1D per block + the LM head; BERT: 6 per layer + the pooler
            assert report["int8_linear"] == (2 * 4 + 1 if model is gpt2 else 2 * 6 + 1)
            assert not any(type(m).__name__ in ("Linear", "Conv1D") for m in optimized.modules())
        else:
            assert report["bf16_model"] == 1


def test_bad_quantize_values_and_combinations(tmp_path):
    save_tiny_bert(tmp_path, "Model", tokenizer=False)
    with pytest.raises(ValueError, match="quantize must be one of"):
        ff.from_pretrained(tmp_path, quantize="int4")
    with pytest.raises(ValueError, match="leave dtype and device None"):
        ff.from_pretrained(tmp_path, quantize="bf16", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="quantize must be one of"):
        ff.optimize(torch.nn.Sequential(torch.nn.Linear(4, 4)), quantize="fp8")
    with pytest.raises(ValueError, match="CPU float32 model"):
        ff.optimize(torch.nn.Sequential(torch.nn.Linear(4, 4)).double(), quantize="bf16")


@pytest.mark.parametrize("mode, flag", [("int8", "avx512_vnni"), ("bf16", "avx512_bf16")])
def test_cpu_without_the_instructions_is_refused_naming_them(tmp_path, monkeypatch, mode, flag):
    save_tiny_bert(tmp_path, "Model", tokenizer=False)
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    with pytest.raises(RuntimeError, match=f"quantize='{mode}' cannot run on this CPU: .*{flag}"):
        ff.from_pretrained(tmp_path, quantize=mode)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(RuntimeError, match=flag):
        ff.optimize(model, quantize=mode)
    assert type(model[0]) is torch.nn.Linear  # refused before anything changed


def test_onednn_isa_limit_is_refused(monkeypatch):
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx512_vnni", "avx512_bf16"}))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    for mode in ("int8", "bf16"):
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu_features.missing_for(mode)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni")
    assert cpu_features.missing_for("int8") is None and cpu_features.missing_for("bf16") is not None
