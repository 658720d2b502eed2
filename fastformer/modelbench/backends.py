"""The implementations `fastformer bench --backends` compares. Each loader returns a callable taking
the benchmark's keyword inputs and returning the last hidden state, or raises BackendUnavailable with
the exact reason, so a backend that is not in this build, not installed or not applicable reports why
instead of stopping the run. Backends that depend on work not merged yet (ff.optimize, native
decoders and encoder-decoders) light up with no change here once it is.

A new backend is one Backend entry in BACKENDS: ours=True for fastformer's own variants (the verdict
compares them with the fastest other backend), quantized=True when it computes below --dtype (its row
is labelled, and the verdict also names the fastest full-precision backend), spins=True when its
threads busy-wait between calls (the run is then timed in alternating blocks)."""
import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

import fastformer
from fastformer.hf import seq2seq as hf_seq2seq
from fastformer.hf.checkpoint import read_config
from fastformer.modelbench import ctranslate2_runtime, onnx_runtime, openvino_runtime
from fastformer.modelbench.models import ModelSource, import_transformers


class BackendUnavailable(Exception):
    """This backend cannot run this model here; str() says why."""


@dataclass
class LoadContext:
    source: ModelSource
    device: str
    dtype: torch.dtype
    threads: int
    workdir: str
    example_inputs: dict  # a small batch in the benchmark's input format (ONNX export traces it)


Runner = Callable[..., torch.Tensor]


def last_hidden_state(output) -> torch.Tensor:
    """The hidden states of the last layer from whatever the model returned."""
    if isinstance(output, torch.Tensor):
        return output
    if getattr(output, "last_hidden_state", None) is not None:
        return output.last_hidden_state
    if isinstance(output, (tuple, list)):
        return last_hidden_state(output[0])
    raise TypeError(f"cannot find the last hidden state in a {type(output).__name__}")


def _as_runner(model) -> Runner:
    return lambda **inputs: last_hidden_state(model(**inputs))


def load_hf(ctx: LoadContext, attn_implementation: str | None, dtype: torch.dtype | None = None):
    """The checkpoint as a Hugging Face base model (AutoModel), in eval mode on ctx.device."""
    try:
        transformers = import_transformers()
    except ImportError:
        raise BackendUnavailable("transformers is not installed (pip install transformers)") from None
    try:
        model = transformers.AutoModel.from_pretrained(ctx.source.path, attn_implementation=attn_implementation,
                                                       dtype=dtype or ctx.dtype)
    except Exception as e:
        raise BackendUnavailable(f"the checkpoint does not load in transformers: {type(e).__name__}: {e}") from None
    return model.to(ctx.device).eval()


def reference(ctx: LoadContext) -> Runner:
    """The accuracy reference: Hugging Face eager in float32 on the benchmark's device."""
    return _as_runner(load_hf(ctx, "eager", dtype=torch.float32))


def _native(ctx: LoadContext, quantize: str | None = None) -> Runner:
    # Encoder-decoders have no bare-body task: their LM model's teacher-forced decoder output is what
    # Hugging Face's T5Model / BartModel / MarianModel return as last_hidden_state.
    if quantize is not None and (torch.device(ctx.device).type != "cpu" or ctx.dtype != torch.float32):
        raise BackendUnavailable(f"quantize={quantize!r} runs on the CPU from a float32 checkpoint; use --device cpu "
                                 "--dtype float32")
    placement = {"quantize": quantize} if quantize else {"dtype": ctx.dtype, "device": ctx.device}
    try:
        seq2seq = read_config(ctx.source.path).get("model_type") in hf_seq2seq.FAMILIES
        model = fastformer.from_pretrained(ctx.source.path, task="seq2seq-lm" if seq2seq else "base", **placement)
    except (ValueError, RuntimeError) as e:  # unsupported model_type, malformed checkpoint, a quantize mode this
        raise BackendUnavailable(str(e)) from None  # CPU cannot run: its message says which
    return (lambda **inputs: model.decoder_hidden(**inputs)) if seq2seq else _as_runner(model)


def _hf_optimize(ctx: LoadContext) -> Runner:
    if not hasattr(fastformer, "optimize"):
        raise BackendUnavailable("fastformer.optimize not available in this build")
    return _as_runner(fastformer.optimize(load_hf(ctx, None)))


def _hf_eager(ctx: LoadContext) -> Runner:
    return _as_runner(load_hf(ctx, "eager"))


def _hf_sdpa(ctx: LoadContext) -> Runner:
    return _as_runner(load_hf(ctx, "sdpa"))


def _hf_compile(ctx: LoadContext) -> Runner:
    # Compiling happens in the first calls (the warm-up); each new shape compiles again.
    return _as_runner(torch.compile(load_hf(ctx, "sdpa")))


# How each CPU engine is imported: CTranslate2 through its runtime module, which binds its native library to its own
# OpenMP runtime; a plain `import ctranslate2` first would bind it to torch's for the rest of the process.
_IMPORTERS = {"ctranslate2": ctranslate2_runtime.import_ctranslate2}


def _require_cpu_float32(ctx: LoadContext, package: str, install: str):
    """The CPU engines run here on the CPU in float32 only, and only when installed."""
    if torch.device(ctx.device).type != "cpu":
        raise BackendUnavailable("runs on the CPU only here; use --device cpu")
    if ctx.dtype != torch.float32:
        raise BackendUnavailable(f"benchmarked in float32 only, not {str(ctx.dtype).removeprefix('torch.')}")
    try:
        _IMPORTERS.get(package, lambda: importlib.import_module(package))()
    except ImportError:
        raise BackendUnavailable(f"{package} is not installed (pip install {install}, or the `peers` extras)") from None


def _onnxruntime(ctx: LoadContext) -> Runner:
    _require_cpu_float32(ctx, "onnxruntime", "onnxruntime onnx")
    model = load_hf(ctx, "eager", dtype=torch.float32)
    try:
        with torch.inference_mode():
            return onnx_runtime.session_runner(model, ctx.example_inputs,
                                               onnx_runtime.onnx_file_for(ctx.workdir, ctx.source.name), ctx.threads)
    except Exception as e:
        raise BackendUnavailable(f"ONNX export or session failed: {type(e).__name__}: {e}") from None


def _openvino(ctx: LoadContext) -> Runner:
    _require_cpu_float32(ctx, "openvino", "openvino")
    model = load_hf(ctx, "sdpa", dtype=torch.float32)
    try:
        return openvino_runtime.compiled_runner(model, ctx.example_inputs, ctx.threads)
    except Exception as e:
        raise BackendUnavailable(f"OpenVINO conversion or compilation failed: {type(e).__name__}: {e}") from None


def _ctranslate2(compute_type: str) -> Callable[[LoadContext], Runner]:
    def load(ctx: LoadContext) -> Runner:
        _require_cpu_float32(ctx, "ctranslate2", "ctranslate2")
        if ctx.source.kind != "encoder":
            raise BackendUnavailable(f"CTranslate2 gives hidden states for encoders only; {ctx.source.model_type} is "
                                     f"{'a' if ctx.source.kind == 'decoder' else 'an'} {ctx.source.kind}")
        try:
            folder = ctranslate2_runtime.converted_folder(ctx.source.path, ctx.source.name)
            return ctranslate2_runtime.encoder_runner(folder, compute_type, ctx.threads)
        except Exception as e:
            raise BackendUnavailable(f"CTranslate2 conversion or loading failed: {type(e).__name__}: {e}") from None
    return load


@dataclass(frozen=True)
class Backend:
    name: str
    description: str
    load: Callable[[LoadContext], Runner]
    ours: bool = False  # a fastformer row: the verdict reports it against the fastest of the others
    quantized: bool = False  # computes below --dtype (int8 weights, ...): labelled, and ranked apart in the verdict
    spins: bool = False  # its worker threads spin between calls: timed in blocks, not interleaved call by call


BACKENDS = {b.name: b for b in [
    Backend("fastformer", "fastformer native model (ff.from_pretrained)", _native, ours=True),
    Backend("fastformer-int8", "fastformer native model, quantize='int8' (CPU)",
            functools.partial(_native, quantize="int8"), ours=True, quantized=True),
    Backend("fastformer-bf16", "fastformer native model, quantize='bf16' (CPU)",
            functools.partial(_native, quantize="bf16"), ours=True, quantized=True),
    Backend("hf+optimize", "Hugging Face model with fastformer kernels swapped in (ff.optimize)", _hf_optimize,
            ours=True),
    Backend("hf-eager", "Hugging Face, attn_implementation='eager'", _hf_eager),
    Backend("hf-sdpa", "Hugging Face, attn_implementation='sdpa'", _hf_sdpa),
    Backend("hf+compile", "torch.compile of the Hugging Face sdpa model", _hf_compile),
    Backend("onnxruntime", "ONNX Runtime, CPU execution provider, ORT_ENABLE_ALL, default (spinning) thread pool",
            _onnxruntime, spins=True),
    Backend("openvino", "OpenVINO CPU plugin, converted from the Hugging Face sdpa model, f32 precision hint, "
            "latency hint", _openvino, spins=True),
    Backend("ctranslate2", "CTranslate2 Encoder, float32, converted with its own converter (cached)",
            _ctranslate2("float32"), spins=True),
    Backend("ctranslate2-int8", "CTranslate2 Encoder, int8 weights and matmuls (quantized: lower accuracy)",
            _ctranslate2("int8"), quantized=True, spins=True),
]}


def parse_backends(spec: str) -> list[str]:
    """A comma-separated list of BACKENDS names, or "all"."""
    if spec == "all":
        return list(BACKENDS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names:
        raise ValueError(f"--backends: unknown backend(s) {unknown or [spec]}; choose from {', '.join(BACKENDS)} "
                         "or 'all'")
    return list(dict.fromkeys(names))
