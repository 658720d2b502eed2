"""CPU model benchmarks (pytest-benchmark) on the loaders of `fastformer bench`: the real
all-MiniLM-L6-v2 and BERT-base (random weights) at batch 1 x 128 tokens, fp32, every backend that runs
here (the others are skipped with the reason). Not interleaved, unlike `fastformer bench`: pytest-benchmark
runs one test after the other, so load drift on a shared machine shows up in the ratios.

  pytest bench/test_models_cpu.py --threads 2 [-k minilm]
"""
import pytest
import torch

from fastformer.modelbench import backends, inputs, models

MODELS = ["all-MiniLM-L6-v2", "bert-base"]
BATCH, SEQ = 1, 128
# The summary in bench/conftest.py prints ours / baseline speed-ups per group.
ROLES = {"fastformer": "ours", "hf-eager": "baseline"}


@pytest.fixture(scope="module")
def model_context(tmp_path_factory):
    """model name -> (LoadContext, inputs), built once per model."""
    made = {}

    def make(name):
        if name not in made:
            workdir = str(tmp_path_factory.mktemp("models"))
            source = models.resolve(name, workdir)
            tokenizer, _ = inputs.load_tokenizer(source)
            model_inputs = inputs.make_inputs(source, tokenizer, BATCH, SEQ, "cpu", "fixed")
            made[name] = (backends.LoadContext(source, "cpu", torch.float32, torch.get_num_threads(), workdir,
                                               model_inputs), model_inputs)
        return made[name]
    return make


@pytest.mark.parametrize("backend", [b for b in backends.BACKENDS if b != "hf+compile"])
@pytest.mark.parametrize("model", MODELS)
def test_model(benchmark, model_context, model, backend):
    ctx, model_inputs = model_context(model)
    try:
        runner = backends.BACKENDS[backend].load(ctx)
    except backends.BackendUnavailable as e:
        pytest.skip(f"{backend}: {e}")
    benchmark.group = f"{model} {BATCH}x{SEQ} fp32"
    benchmark.extra_info["role"] = ROLES.get(backend, backend)
    with torch.inference_mode():
        benchmark(lambda: runner(**model_inputs))
