"""ONNX Runtime (CPU execution provider) as a benchmark backend: export a Hugging Face model with the
TorchScript exporter, then a fully optimized session at ONNX Runtime's default threading (its pool
threads spin between calls, which is its fastest setting; the runner times spinning backends in blocks
so the spinning does not steal from the next backend's timed call)."""
import os
import warnings

import torch


class LastHiddenOnly(torch.nn.Module):
    """The model's forward with positional inputs in `input_names` order (transformers 5 takes them by
    keyword) and one output, the last hidden state: the form graph exporters and converters trace."""

    def __init__(self, model, input_names):
        super().__init__()
        self.model = model
        self.input_names = input_names

    def forward(self, *tensors):
        return self.model(**dict(zip(self.input_names, tensors))).last_hidden_state


def session_runner(model: torch.nn.Module, example_inputs: dict[str, torch.Tensor], onnx_file: str, threads: int):
    """Exports `model` (fp32, CPU) with dynamic batch and sequence axes to onnx_file and returns a
    callable taking the same keyword inputs and giving the last hidden state as a torch tensor."""
    import onnxruntime as ort

    names = list(example_inputs)
    # dynamo=False: the TorchScript exporter handles these encoders and decoders at opset 17 here; the
    # dynamo exporter needs onnxscript and fails on several transformers models. Its tracer warnings
    # (Python booleans frozen into the graph) are checked by the benchmark itself: every shape's output
    # is compared with the fp32 reference.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHiddenOnly(model, names).eval(), tuple(example_inputs.values()), onnx_file,
                          input_names=names, output_names=["last_hidden_state"], dynamo=False, opset_version=17,
                          dynamic_axes={name: {0: "batch", 1: "seq"} for name in names})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_file, options, providers=["CPUExecutionProvider"])

    def run(**inputs):
        feed = {name: tensor.cpu().numpy() for name, tensor in inputs.items()}
        return torch.from_numpy(session.run(None, feed)[0])

    return run


def onnx_file_for(workdir: str, model_name: str) -> str:
    return os.path.join(workdir, f"{os.path.basename(os.path.normpath(model_name))}.onnx")
