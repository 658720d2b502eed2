"""OpenVINO (CPU plugin) as a benchmark backend: the Hugging Face model converted in memory with
openvino.convert_model (dynamic batch and sequence), compiled for latency with the fp32 precision hint
(without it OpenVINO may run bf16 on CPUs that have it) and --threads inference threads."""
import warnings

import torch

from fastformer.modelbench.models import quiet_transformers
from fastformer.modelbench.onnx_runtime import LastHiddenOnly

COMPILE_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}


def compiled_runner(model: torch.nn.Module, example_inputs: dict[str, torch.Tensor], threads: int):
    """A callable taking the benchmark's keyword inputs and giving the last hidden state (torch tensor)."""
    import openvino

    names = list(example_inputs)
    with warnings.catch_warnings(), torch.inference_mode(), quiet_transformers():
        warnings.simplefilter("ignore")  # tracer warnings; every output is checked against the reference
        converted = openvino.convert_model(LastHiddenOnly(model, names).eval(),
                                           example_input=tuple(example_inputs.values()))
    compiled = openvino.Core().compile_model(converted, "CPU", {**COMPILE_CONFIG, "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()

    def run(**inputs):
        result = request.infer([inputs[name].cpu().numpy() for name in names])
        return torch.from_numpy(result[compiled.output(0)].copy())  # the request reuses its output buffer

    return run
