"""`fastformer bench` end to end on tiny models and shapes: JSON / CSV contents (fields, units), every
requested backend reporting a result or the reason it has none, bad input, and kernel mode."""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import fastformer
from fastformer import cli, opbench
from fastformer.modelbench import backends, inputs, models, report, runner, timing, verdict

transformers = pytest.importorskip("transformers")

# Head dim 32: the smallest the fastformer attention kernels take.
TINY = {
    "bert": lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=64)),
    "gpt2": lambda: transformers.GPT2Model(transformers.GPT2Config(
        vocab_size=100, n_embd=64, n_layer=2, n_head=2, n_positions=64)),
    "t5": lambda: transformers.T5Model(transformers.T5Config(
        vocab_size=100, d_model=64, d_kv=32, d_ff=128, num_layers=2, num_heads=2)),
}
# Every run starts from these; a test's own options come after them and win (argparse keeps the last).
# The CPU is pinned so that a GPU machine checks the same numbers as CI (fp32, ONNX Runtime present).
QUICK = ["--device", "cpu", "--reps", "3", "--warmup", "1", "--threads", "2"]
ROW_FIELDS = {"model", "model_type", "device", "dtype", "batch", "seq", "backend", "status", "reason"}
NUMBER_FIELDS = {"median_ms", "p90_ms", "p99_ms", "tokens_per_s", "peak_mem_MiB", "first_call_s", "speedup",
                 "max_abs_diff"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint(kind) -> folder of a tiny random Hugging Face model of that kind."""
    made = {}

    def make(kind):
        if kind not in made:
            torch.manual_seed(0)
            made[kind] = str(tmp_path_factory.mktemp(kind))
            TINY[kind]().save_pretrained(made[kind])
        return made[kind]
    return make


def _bench(tmp_path, *args):
    """Runs `fastformer bench ... --json` in-process: (exit status, parsed JSON)."""
    out = tmp_path / "out.json"
    status = cli.main(["bench", *QUICK, *args, "--json", str(out)])
    return status, json.loads(out.read_text()) if out.exists() else None


def _rows(result, backend):
    return [r for r in result["results"] if r["backend"] == backend]


def test_json_and_csv_report_every_backend_at_every_grid_point(tmp_path, checkpoint):
    names = ["fastformer", "hf+optimize", "hf-eager", "hf-sdpa", "onnxruntime"]
    csv_path = tmp_path / "out.csv"
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", ",".join(names),
                            "--batch", "1,2", "--seq", "8,17", "--csv", str(csv_path))
    assert status == 0
    meta, rows = result["meta"], result["results"]
    assert {"machine", "cpu", "cpu_isa_detected", "fastformer_compiled_cpu_isa", "git_sha", "versions", "time_utc", "torch_threads", "units", "memory",
            "reference", "timed_call", "inputs"} <= set(meta)
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["units"]["median_ms"] == "ms" and meta["units"]["peak_mem_MiB"] == "MiB"
    assert "random token ids" in meta["inputs"] and meta["lengths"] == "real"
    assert len(rows) == len(names) * 2 * 2
    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert r["padded_tokens"] == r["batch"] * r["padded_seq"] and 0 < r["real_tokens"] <= r["padded_tokens"]
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] and r["p99_ms"] >= r["p90_ms"]
            assert r["tokens_per_s"] == pytest.approx(r["real_tokens"] / (r["median_ms"] / 1e3))
            assert r["max_abs_diff"] < 1e-4  # fp32 everywhere: the same function as the reference
        else:
            assert r["reason"], r
    for name in ("fastformer", "hf-eager", "hf-sdpa", "onnxruntime"):
        assert all(r["status"] == "ok" for r in _rows(result, name)), _rows(result, name)
    assert all(r["speedup"] == pytest.approx(1.0) for r in _rows(result, "hf-eager"))
    optimize = _rows(result, "hf+optimize")
    assert all(r["status"] == "ok" or "fastformer.optimize not available" in r["reason"] for r in optimize)

    with open(csv_path) as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(rows)
    assert {"median_ms", "tokens_per_s", "max_abs_diff", "git_sha", "torch", "machine"} <= set(table[0])
    assert {(r["backend"], r["status"]) for r in table} == {(r["backend"], r["status"]) for r in rows}


def test_default_model_runs_on_real_sentences(tmp_path, capsys):
    status, result = _bench(tmp_path, "--backends", "fastformer,hf-eager", "--batch", "2", "--seq", "16",
                            "--lengths", "fixed")
    assert status == 0
    assert result["meta"]["model"]["name"] == "all-MiniLM-L6-v2"
    assert result["meta"]["model"]["weights"] == "from the checkpoint"
    assert "real sentences" in result["meta"]["inputs"] and "exactly seq tokens" in result["meta"]["inputs"]
    assert all(r["status"] == "ok" and r["max_abs_diff"] < 1e-4 for r in result["results"])
    assert all(r["real_tokens"] == r["padded_tokens"] == 32 for r in result["results"])
    table = capsys.readouterr().out
    assert "cpu float32 batch 2 x seq 16 (32 tokens, no padding)" in table and "fastformer" in table
    assert "tokens/s" in table
    assert "after 1 warm-up round;" in table  # QUICK's --warmup 1
    assert "last hidden state" in table and "Hugging Face eager, float32" in table  # what max|diff| compares


def test_fixed_inputs_are_exactly_seq_tokens_and_real_ones_are_the_sentences_padded():
    source = models.ModelSource(name="t", path="", model_type="t5", kind="encoder-decoder", random_weights=True,
                                vocab_size=100, max_positions=None)
    random_inputs = inputs.make_inputs(source, None, 3, 11, "cpu", "fixed")
    assert random_inputs["input_ids"].shape == (3, 11) and random_inputs["decoder_input_ids"].shape == (3, 11)
    assert inputs.token_counts(random_inputs) == (33, 33)
    lines = inputs.sentences()
    assert len(lines) >= 32 and len(set(lines)) == len(lines)
    assert min(map(len, lines)) < 30 and max(map(len, lines)) > 100  # short queries to long sentences

    tokenizer, why_not = inputs.load_tokenizer(models.resolve(None, ""))
    assert why_not is None
    minilm = models.resolve(None, "")
    real = inputs.make_inputs(minilm, tokenizer, 32, 128, "cpu")  # --lengths real, the default
    lengths = real["attention_mask"].sum(1)
    expected = [len(tokenizer(line)["input_ids"]) for line in lines[:32]]
    assert lengths.tolist() == expected  # row i is sentence i, tokenized as it is
    assert real["input_ids"].shape == (32, max(expected))  # padded to the longest row
    assert (real["input_ids"][real["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    assert inputs.token_counts(real) == (sum(expected), 32 * max(expected))
    capped = inputs.make_inputs(minilm, tokenizer, 8, 12, "cpu")
    assert capped["input_ids"].shape[1] == 12  # seq caps the longest row
    # Without a tokenizer: random ids with the sentences' word counts (+2 special tokens) as lengths.
    no_tokenizer = inputs.make_inputs(source, None, 4, 128, "cpu")
    assert no_tokenizer["attention_mask"].sum(1).tolist() == [len(line.split()) + 2 for line in lines[:4]]


def test_decoder_and_encoder_decoder_prefill(tmp_path, checkpoint):
    for kind in ("gpt2", "t5"):
        status, result = _bench(tmp_path, "--model", checkpoint(kind), "--backends", "fastformer,hf-eager,hf-sdpa",
                                "--batch", "2", "--seq", "12")
        assert status == 0
        assert "prefill" in result["meta"]["timed_call"]
        # The native GPT-2 and T5 run the same prefill and agree with transformers (fp32: 1e-4).
        for r in result["results"]:
            assert r["status"] == "ok" and r["max_abs_diff"] < 1e-4, r


def test_unknown_model_and_backend_say_what_is_valid(tmp_path, capsys):
    status, result = _bench(tmp_path, "--model", "no-such-model")
    assert status == 2 and result is None
    err = capsys.readouterr().err
    assert "no-such-model" in err and "bert-base" in err
    status, _ = _bench(tmp_path, "--backends", "hf-eager,tensorrt")
    assert status == 2
    err = capsys.readouterr().err
    assert "tensorrt" in err and "onnxruntime" in err


@pytest.mark.parametrize("damage", ["no weights", "truncated weights"])
def test_checkpoint_that_fails_to_load_is_reported_per_backend(tmp_path, checkpoint, damage):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint("bert"), broken)
    weights = broken / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:1000])
    names = ["fastformer", "hf-eager", "onnxruntime"]
    status, result = _bench(tmp_path, "--model", str(broken), "--backends", ",".join(names), "--seq", "8",
                            "--batch", "1")
    assert status == 1  # nothing ran, but every backend says why
    assert [r["backend"] for r in result["results"]] == names
    for r in result["results"]:
        assert r["status"] == "unavailable" and r["reason"], r


def test_folder_that_is_not_a_checkpoint_says_so(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a model")
    status, result = _bench(tmp_path, "--model", str(tmp_path))
    assert status == 2 and result is None
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_reps_and_threads_must_be_positive(value, capsys):
    for option in ("--reps", "--threads"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["bench", option, value])
        assert exit_info.value.code == 2
        assert option in capsys.readouterr().err


def test_shape_too_long_and_out_of_memory_leave_the_others_reporting(tmp_path, checkpoint, monkeypatch):
    def out_of_memory(**_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setitem(backends.BACKENDS, "hf-sdpa", backends.Backend("hf-sdpa", "fails", lambda ctx: out_of_memory))
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "hf-eager,hf-sdpa",
                            "--batch", "1", "--seq", "8,65", "--lengths", "fixed")
    assert status == 0
    by_key = {(r["backend"], r["seq"]): r for r in result["results"]}
    assert by_key["hf-eager", 8]["status"] == "ok"
    assert by_key["hf-sdpa", 8]["status"] == "error" and "out of memory" in by_key["hf-sdpa", 8]["reason"]
    for name in ("hf-eager", "hf-sdpa"):
        assert by_key[name, 65]["status"] == "skipped" and "64 positions" in by_key[name, 65]["reason"]


class _FakeCudaEvent:
    """A CUDA event on a fake device clock that the timed functions advance."""
    clock_ms = 0.0

    def __init__(self, enable_timing):
        assert enable_timing

    def record(self):
        self.at_ms = _FakeCudaEvent.clock_ms

    def elapsed_time(self, end):
        return end.at_ms - self.at_ms


def test_cuda_timing_brackets_each_call_with_events_and_keeps_the_budget(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", _FakeCudaEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)

    def kernel(ms):
        def run():
            _FakeCudaEvent.clock_ms += ms
        return run

    device_ms = [2.0, 5.0]  # what each function takes on the fake device
    fns = [kernel(ms) for ms in device_ms]
    samples = timing.sample_interleaved(fns, reps=7, warmup=2, device="cuda")
    assert samples == [[ms / 1e3] * 7 for ms in device_ms]
    # A spent budget stops the rounds at min_reps.
    samples = timing.sample_interleaved(fns, reps=50, warmup=0, device="cuda", budget_s=0.0, min_reps=5)
    assert [len(s) for s in samples] == [5, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_fp16_run_reports_latency_and_accuracy(tmp_path, checkpoint):
    # A budget this small stops every point at the 5-round minimum: the budget path is taken on CUDA.
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer,hf-eager,hf-sdpa",
                            "--device", "cuda", "--dtype", "float16", "--batch", "2", "--seq", "16", "--reps", "8",
                            "--budget", "1e-9")
    assert status == 0
    assert result["meta"]["gpu"]
    for r in result["results"]:
        assert r["status"] == "ok", r
        assert r["reps"] == 5 and r["median_ms"] > 0 and r["peak_mem_MiB"] >= 0
    # Accuracy against the fp32 reference: within 2x Hugging Face's own fp16 error, plus a small atol.
    hf_error = _rows(result, "hf-eager")[0]["max_abs_diff"]
    assert 0 < hf_error < 5e-2
    for r in result["results"]:
        assert r["max_abs_diff"] <= 2 * hf_error + 1e-3, r


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report for a missing GPU")
def test_missing_device_is_reported_and_the_rest_runs(tmp_path, checkpoint):
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "hf-eager", "--device", "cpu,cuda",
                            "--batch", "1", "--seq", "8")
    assert status == 0
    by_device = {r["device"]: r for r in result["results"]}
    assert by_device["cpu"]["status"] == "ok"
    assert by_device["cuda"]["status"] == "unavailable" and "no CUDA device" in by_device["cuda"]["reason"]


def test_plot_writes_a_png(tmp_path, checkpoint):
    pytest.importorskip("matplotlib")
    png = tmp_path / "latency.png"
    status, _ = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "hf-eager,hf-sdpa", "--batch", "1,2",
                       "--seq", "8", "--plot", str(png))
    assert status == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_how_to_get_it_before_running(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    status, result = _bench(tmp_path, "--model", "no-such-model", "--plot", str(tmp_path / "x.png"))
    assert status == 2 and result is None
    assert "pip install matplotlib" in capsys.readouterr().err


def test_ops_mode_reports_rates_against_measured_machine_limits(tmp_path):
    out = tmp_path / "ops.json"
    assert cli.main(["bench", "--ops", "--shapes", "16x96", "--reps", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    limits = result["meta"]["limits"]
    assert limits["copy_GBps"] > 0 and limits["matmul_TFLOPs"] > 0
    ops = {r["op"] for r in result["results"]}
    assert {"layer_norm", "add+layer_norm", "softmax", "attention(padded)", "varlen_attention"} <= ops
    for r in result["results"]:
        assert r["ours_ms"] > 0 and r["pct_of_limit"] > 0
        assert (r["ours_TFLOPs"] is not None) == (r["bound"] == "compute")


@pytest.mark.parametrize("args, expected", [
    pytest.param(["--device", "cuda"], "no CUDA device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="checks the message for a missing GPU")),
    (["--device", "cpu", "--kernel-backend", "cuda"], "--kernel-backend cuda"),
    (["--device", "cpu", "--backend", "cuda"], "--kernel-backend cuda"),  # the old name is an alias
    (["--device", "cpu", "--dtype", "float16"], "float16 is not a CPU target"),
])
def test_ops_mode_that_cannot_run_here_says_why_before_measuring(tmp_path, capsys, args, expected):
    out = tmp_path / "ops.json"
    assert cli.main(["bench", "--ops", "--shapes", "16x96", "--reps", "3", *args, "--json", str(out)]) == 2
    assert expected in capsys.readouterr().err
    assert not out.exists()


def test_module_entry_point_runs_a_benchmark(tmp_path, checkpoint):
    out = tmp_path / "out.json"
    done = subprocess.run([sys.executable, "-m", "fastformer", "bench", *QUICK, "--model", checkpoint("bert"),
                           "--backends", "hf-eager", "--batch", "1", "--seq", "8", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "cpu float32 batch 1 x seq 8" in done.stdout
    assert [r["status"] for r in json.loads(out.read_text())["results"]] == ["ok"]


def test_console_script_is_installed():
    script = shutil.which("fastformer", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip(f"no fastformer console script next to {sys.executable} (not pip-installed into it)")
    done = subprocess.run([script, "bench", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--backends" in done.stdout and "--ops" in done.stdout


def test_minilm_preset_has_the_real_checkpoints_shape():
    with open(f"{models.default_model_path()}/config.json") as f:
        real = json.load(f)
    class_name, sizes = models.PRESETS["minilm-l6"]
    preset = getattr(transformers, class_name)(**sizes).to_dict()
    shape = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size", "max_position_embeddings", "hidden_act")
    assert {k: preset[k] for k in shape} == {k: real[k] for k in shape}


def test_version_and_bench_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"fastformer {fastformer.__version__}"
    with pytest.raises(SystemExit):
        cli.main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines where it likes
    assert "Model mode (the default) times whole models" in help_text and "Kernel mode (--ops)" in help_text
    assert "(default hf-eager)" in help_text and "--kernel-backend" in help_text


@pytest.mark.parametrize("option", ["--json", "--csv", "--plot"])
def test_unwritable_output_path_fails_before_measuring(tmp_path, monkeypatch, capsys, option):
    def must_not_run(*args, **kwargs):
        raise AssertionError("measured although the output cannot be written")

    monkeypatch.setattr(runner, "run", must_not_run)
    monkeypatch.setattr(opbench, "run", must_not_run)
    path = str(tmp_path / "no-such-folder" / "out")
    for mode in ([], ["--ops"]) if option == "--json" else ([],):
        assert cli.main(["bench", *QUICK, *mode, option, path]) == 2
        err = capsys.readouterr().err
        assert option in err and path in err and "cannot write" in err
    writable = tmp_path / "out.json"
    report.check_writable(str(writable), "--json")
    assert not writable.exists()  # the check leaves nothing behind


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "soon"])
def test_budget_must_be_finite_and_not_negative(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--budget", value])
    assert exit_info.value.code == 2 and "--budget" in capsys.readouterr().err


def test_pinned_extras_match_ci_requirements():
    tomllib = pytest.importorskip("tomllib")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    with open(os.path.join(root, ".ci", "requirements.txt")) as f:
        ci = {line.split("#")[0].strip() for line in f} - {""}
    pinned = [pin for group in extras.values() for pin in group if "==" in pin]
    assert pinned and set(pinned) <= ci, set(pinned) - ci


PEERS = ["onnxruntime", "openvino", "ctranslate2", "ctranslate2-int8"]


def test_peers_run_beside_fastformer_on_padded_batches(tmp_path, checkpoint, monkeypatch):
    for package in ("onnxruntime", "openvino", "ctranslate2"):
        pytest.importorskip(package)
    monkeypatch.setenv("FASTFORMER_CACHE", str(tmp_path / "cache"))
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", ",".join(["fastformer", *PEERS]),
                            "--batch", "1,8", "--seq", "32")
    assert status == 0
    padded = [r for r in result["results"] if r["batch"] == 8]
    assert all(r["real_tokens"] < r["padded_tokens"] for r in padded)  # the sentences differ in length
    for r in result["results"]:
        assert r["status"] == "ok", r
        assert r["quantized"] == (r["backend"] == "ctranslate2-int8") and r["ours"] == (r["backend"] == "fastformer")
        # Accuracy over the real tokens only: CTranslate2 does not compute the padded positions at all.
        if r["quantized"]:
            assert 1e-4 < r["max_abs_diff"] < 1.0, r
        else:
            assert r["max_abs_diff"] < 1e-4, r
    # Spinning thread pools: timed in alternating blocks, and the header says so.
    assert {r["timing"] for r in result["results"]} == {"blocks"}
    assert "alternating blocks" in result["meta"]["timing"]["cpu"] and "onnxruntime" in result["meta"]["timing"]["cpu"]
    # CTranslate2's conversion is cached by content: a copy of the checkpoint elsewhere reuses it.
    converted = os.listdir(tmp_path / "cache" / "ctranslate2")
    assert len(converted) == 1 and converted[0].startswith(os.path.basename(checkpoint("bert")))
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint("bert"), copy)
    from fastformer.modelbench import ctranslate2_runtime
    assert ctranslate2_runtime.converted_folder(str(copy), "copy").endswith(converted[0].split("-")[-1])


def test_peers_not_installed_or_not_applicable_say_why(tmp_path, checkpoint, monkeypatch):
    for package in ("onnxruntime", "openvino", "ctranslate2"):
        monkeypatch.setitem(sys.modules, package, None)  # import now raises ImportError
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", ",".join(["hf-eager", *PEERS]),
                            "--batch", "1", "--seq", "8")
    assert status == 0
    for r in result["results"]:
        if r["backend"] != "hf-eager":
            package = r["backend"].removesuffix("-int8")
            assert r["status"] == "unavailable" and f"{package} is not installed" in r["reason"], r
    monkeypatch.undo()
    pytest.importorskip("ctranslate2")
    status, result = _bench(tmp_path, "--model", checkpoint("gpt2"), "--backends", "hf-eager,ctranslate2",
                            "--batch", "1", "--seq", "8")
    ct2 = _rows(result, "ctranslate2")[0]
    assert ct2["status"] == "unavailable" and "encoders only" in ct2["reason"]


def test_ctranslate2_runs_on_its_own_openmp_runtime(tmp_path, checkpoint):
    """In a `fastformer bench` process, CTranslate2's library binds its own bundled libgomp, not torch's: sharing one
    OpenMP runtime slowed both engines (fastformer/modelbench/ctranslate2_runtime.import_ctranslate2). Through the
    CLI, because a plain `import ctranslate2` anywhere before (the backend's is-it-installed check did one) undoes it."""
    pytest.importorskip("ctranslate2")
    command = [sys.executable, "-m", "fastformer", "bench", *QUICK, "--model", checkpoint("bert"), "--backends",
               "ctranslate2", "--batch", "1", "--seq", "8", "--json", str(tmp_path / "out.json")]
    env = {**os.environ, "LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(tmp_path / "bindings"),
           "FASTFORMER_CACHE": str(tmp_path / "cache")}
    subprocess.run(command, env=env, capture_output=True, timeout=300, check=True)
    assert json.loads((tmp_path / "out.json").read_text())["results"][0]["status"] == "ok"
    bindings = [line for path in tmp_path.glob("bindings.*") for line in path.read_text().splitlines()]
    gomp = [line for line in bindings if "libctranslate2" in line and "`GOMP_parallel'" in line]
    assert gomp and all("ctranslate2.libs/libgomp" in line for line in gomp), gomp


def test_blocks_give_each_backend_an_untimed_call_then_timed_calls_in_a_row():
    calls = []
    fns = [lambda name=name: calls.append(name) for name in "abc"]
    samples = timing.sample_blocks(fns, reps=6, warmup=1, block=4)
    assert [len(s) for s in samples] == [6, 6, 6]
    warmup, timed = calls[:3], calls[3:]
    assert warmup == ["a", "b", "c"]
    # Round 1 starts at a, round 2 at b: 1 untimed + 4 timed calls, then 1 untimed + the 2 left.
    assert "".join(timed) == "aaaaa" "bbbbb" "ccccc" "bbb" "ccc" "aaa"
    assert [len(s) for s in timing.sample_blocks(fns, reps=50, warmup=0, budget_s=0.0, min_reps=5)] == [8, 8, 8]


def _row(backend, ms, **flags):
    return {"device": "cpu", "dtype": "float32", "batch": 8, "seq": 128, "padded_seq": 30, "backend": backend,
            "status": "ok", "median_ms": ms, "ours": backend.startswith("fastformer"), **flags}


def test_verdict_names_the_fastest_and_says_when_fastformer_loses():
    lost = verdict.point_verdict([_row("fastformer", 30.0), _row("hf-eager", 45.0), _row("onnxruntime", 20.0)])
    assert lost["fastest"] == "onnxruntime" and lost["fastformer_vs_fastest_other"] == pytest.approx(1.5)
    assert lost["text"] == "onnxruntime is faster (20.00 ms): fastformer (30.00 ms) takes 1.50x its time"
    won = verdict.point_verdict([_row("fastformer", 16.0), _row("openvino", 20.0),
                                 {**_row("onnxruntime", 0), "status": "error", "median_ms": None}])
    assert won["text"] == "fastformer is fastest (16.00 ms), 1.25x ahead of openvino (20.00 ms)"
    quantized = verdict.point_verdict([_row("fastformer", 30.0), _row("ctranslate2-int8", 10.0, quantized=True),
                                       _row("ctranslate2", 40.0)])
    assert quantized["fastest"] == "ctranslate2-int8" and quantized["fastest_full_precision_other"] == "ctranslate2"
    assert quantized["text"].startswith("ctranslate2-int8 (quantized) is faster (10.00 ms): fastformer takes 3.00x")
    assert quantized["text"].endswith("fastformer is fastest among full-precision backends (30.00 ms), 1.33x ahead of "
                                      "ctranslate2 (40.00 ms)")
    summary = verdict.summarize([lost, won, quantized])
    assert (summary["points_with_fastformer"], summary["fastformer_fastest"],
            summary["fastformer_fastest_full_precision"], summary["points_with_quantized_rows"]) == (3, 1, 2, 0)
    # fastformer's own quantized row against the quantized peer, after the full-precision verdict.
    both = verdict.point_verdict([_row("fastformer", 30.0), _row("ctranslate2-int8", 10.0, quantized=True),
                                  _row("fastformer-int8", 8.0, quantized=True), _row("ctranslate2", 40.0)])
    assert both["fastformer"] == "fastformer" and both["fastformer_quantized"] == "fastformer-int8"
    assert both["fastformer_quantized_vs_fastest_quantized_other"] == pytest.approx(0.8)
    assert both["text"].endswith("; quantized: fastformer-int8 is fastest (8.00 ms), 1.25x ahead of ctranslate2-int8 "
                                 "(10.00 ms)")
    slower = verdict.point_verdict([_row("fastformer", 30.0), _row("ctranslate2-int8", 10.0, quantized=True),
                                    _row("fastformer-int8", 12.0, quantized=True)])
    assert slower["text"].endswith("; quantized: ctranslate2-int8 is faster (10.00 ms): fastformer-int8 (12.00 ms) "
                                   "takes 1.20x its time")
    summary = verdict.summarize([both, slower])
    assert (summary["points_with_quantized_rows"], summary["fastformer_quantized_fastest_quantized"]) == (2, 1)


def test_table_prints_a_verdict_per_point_and_a_summary(tmp_path, checkpoint, capsys):
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer,hf-eager",
                            "--batch", "1,2", "--seq", "8")
    assert status == 0
    table = capsys.readouterr().out
    assert table.count("\nverdict: ") == 2 and "\nsummary (ratio: fastformer's median / the other's" in table
    points = result["summary"]["points"]
    assert [p["batch"] for p in points] == [1, 2] and all(p["fastformer"] == "fastformer" for p in points)
    assert result["summary"]["points_with_fastformer"] == 2


def test_waiting_for_spinning_threads_stops_once_the_process_is_idle(monkeypatch):
    clock = {"wall": 0.0, "cpu": 0.0}
    busy_until = 0.05  # a pool that spins for 50 ms after the call

    def sleep(seconds):
        spinning = max(0.0, min(clock["wall"] + seconds, busy_until) - clock["wall"])
        clock["wall"] += seconds
        clock["cpu"] += spinning

    monkeypatch.setattr(timing.time, "sleep", sleep)
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(timing.time, "process_time", lambda: clock["cpu"])
    assert timing.wait_until_idle(window_s=0.01) == pytest.approx(0.06)  # 5 busy windows, then an idle one
    busy_until = 10.0
    assert timing.wait_until_idle(max_s=0.25, window_s=0.01) == pytest.approx(0.25)  # bounded


def _fake_load(monkeypatch, loads):
    """The load source returns `loads` in turn (the last one from then on)."""
    from fastformer.modelbench import machine_load
    values = iter(loads)
    last = [loads[-1]]

    def read():
        last[0] = next(values, last[0])
        return last[0]
    monkeypatch.setattr(machine_load, "read_load_average", read)
    return machine_load


def test_busy_machine_is_flagged_in_the_header_the_json_and_the_point_verdict(tmp_path, checkpoint, monkeypatch,
                                                                               capsys):
    _fake_load(monkeypatch, [0.3, 4.7, 1.5])  # before the run, after point 1, after point 2
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer,hf-eager",
                            "--batch", "1,2", "--seq", "8")
    assert status == 0
    load = result["meta"]["load"]
    assert (load["load_average_1m_before"], load["load_average_1m_during"], load["threads"]) == (0.3, [4.7, 1.5], 2)
    assert load["busy"] and "reached 4.7 during the run, above the 2 threads in use" in load["warning"]
    assert [r["load_average_1m"] for r in result["results"]] == [4.7, 4.7, 1.5, 1.5]
    busy, quiet = result["summary"]["points"]
    assert busy["machine_busy"] and busy["text"].endswith("(machine busy: load average 4.7 above the 2 threads in use)")
    assert not quiet["machine_busy"] and "busy" not in quiet["text"]
    table = capsys.readouterr().out
    assert "\nWARNING: the machine was busy: the 1-minute load average reached 4.7" in table
    assert "0.3 before the run, up to 4.7 during it" in table

    _fake_load(monkeypatch, [0.2, 1.9, 2.0])  # our own 2 threads: not busy
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer,hf-eager",
                            "--batch", "1,2", "--seq", "8")
    assert not result["meta"]["load"]["busy"] and result["meta"]["load"]["warning"] is None
    assert "WARNING" not in capsys.readouterr().out


def test_wait_quiet_polls_until_the_load_drops_and_gives_up_after_its_limit(monkeypatch):
    clock = [0.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock[0] += seconds

    machine_load = _fake_load(monkeypatch, [3.0, 2.0, 0.4])
    seen = []
    waited = machine_load.wait_quiet(60, on_wait=seen.append, sleep=sleep, clock=lambda: clock[0])
    assert waited == {"max_s": 60, "waited_s": 10.0, "quiet_load": 0.5, "load_average_1m": 0.4, "quiet": True}
    assert seen == [3.0] and slept == [5.0, 5.0]
    slept.clear()
    clock[0] = 0.0
    machine_load = _fake_load(monkeypatch, [3.0])
    waited = machine_load.wait_quiet(12, sleep=sleep, clock=lambda: clock[0])
    assert (waited["waited_s"], waited["quiet"], slept) == (12.0, False, [5.0, 5.0, 2.0])  # bounded by max_s
    assert machine_load.wait_quiet(60, read=lambda: 0.1, sleep=sleep)["waited_s"] == 0.0  # quiet: no wait


def test_wait_quiet_option_reaches_the_json(tmp_path, checkpoint, monkeypatch, capsys):
    machine_load = _fake_load(monkeypatch, [0.4])
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "hf-eager", "--batch", "1",
                            "--seq", "8", "--wait-quiet", "30")
    assert status == 0 and result["meta"]["load"]["wait_quiet"]["quiet"]
    assert "waited 0 s for a quiet machine" in capsys.readouterr().out
    assert machine_load.QUIET_LOAD == result["meta"]["load"]["wait_quiet"]["quiet_load"]


def test_verdict_is_honest_when_a_peer_wins_under_a_fake_timer(tmp_path, checkpoint, monkeypatch, capsys):
    """The timer says hf-eager takes 20 ms and fastformer 30 ms: the verdict and the summary say we lose."""
    fake_ms = {"fastformer": 30.0, "hf-eager": 20.0}
    order = []

    def fake_sample(fns, reps, *args, **kwargs):
        return [[fake_ms[name] / 1e3] * reps for name in order]

    real_measure = runner._measure_point

    def measure(point, runners, *args, **kwargs):
        order[:] = list(runners)
        return real_measure(point, runners, *args, **kwargs)
    monkeypatch.setattr(runner, "_measure_point", measure)
    monkeypatch.setattr(timing, "sample_interleaved", fake_sample)
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer,hf-eager",
                            "--batch", "1", "--seq", "8")
    assert status == 0
    (point,) = result["summary"]["points"]
    assert point["fastest"] == "hf-eager" and point["fastformer_vs_fastest_other"] == pytest.approx(1.5)
    assert result["summary"]["fastformer_fastest"] == 0
    table = capsys.readouterr().out
    assert "verdict: hf-eager is faster (20.00 ms): fastformer (30.00 ms) takes 1.50x its time" in table
    assert "fastformer is fastest at 0 of 1 points" in table


def test_spread_lengths_pad_rows_of_growing_length_to_seq():
    minilm = models.resolve(None, "")
    tokenizer, _ = inputs.load_tokenizer(minilm)
    spread = inputs.make_inputs(minilm, tokenizer, 8, 128, "cpu", "spread")
    mask, ids = spread["attention_mask"], spread["input_ids"]
    assert ids.shape == (8, 128) and mask.sum(1).tolist() == list(range(16, 129, 16))
    assert inputs.token_counts(spread) == (576, 1024)
    assert (ids[mask == 0] == tokenizer.pad_token_id).all()
    ends = ids[torch.arange(8), mask.sum(1) - 1]
    assert (ends == tokenizer.sep_token_id).all()  # every row ends as the tokenizer ends a text
    fixed = inputs.make_inputs(minilm, tokenizer, 8, 128, "cpu", "fixed")["input_ids"]
    assert all((ids[i, :n - 1] == fixed[i, :n - 1]).all() for i, n in enumerate(mask.sum(1).tolist()))
    source = models.ModelSource(name="t", path="", model_type="bert", kind="encoder", random_weights=True,
                                vocab_size=100, max_positions=None)
    assert inputs.make_inputs(source, None, 3, 10, "cpu", "spread")["attention_mask"].sum(1).tolist() == [3, 6, 10]
    assert inputs.make_inputs(source, None, 4, 2, "cpu", "spread")["attention_mask"].sum(1).tolist() == [1, 1, 1, 2]


def test_quantized_rows_say_what_they_are(tmp_path, checkpoint):
    from fastformer.nn import cpu_features

    names = ["fastformer", "fastformer-int8", "fastformer-bf16"]
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", ",".join(names),
                            "--batch", "2", "--seq", "16")
    assert status == 0
    for name, mode in (("fastformer-int8", "int8"), ("fastformer-bf16", "bf16")):
        (row,) = _rows(result, name)
        missing = cpu_features.missing_for(mode)
        if missing is None:  # measured on the tiny BERT: int8 1.3e-3, bf16 2.3e-2 (fp32 rows < 1e-5)
            assert row["status"] == "ok" and 0 < row["max_abs_diff"] < 0.1, row
        else:
            assert row["status"] != "ok" and missing in row["reason"]
    status, result = _bench(tmp_path, "--model", checkpoint("bert"), "--backends", "fastformer-int8",
                            "--dtype", "bfloat16", "--batch", "1", "--seq", "8")
    assert "float32" in _rows(result, "fastformer-int8")[0]["reason"]
