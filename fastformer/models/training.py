"""Fine-tuning helpers: choose which parameters of an encoder model train."""
from torch import nn


def freeze(model: nn.Module, train: str = "all", top_layers: int = 0) -> nn.Module:
    """Sets requires_grad for fine-tuning and returns the model.

    train="all": everything trains; "head": only the task head (everything outside `encoder`);
    "top": the head plus the top `top_layers` encoder layers.
    """
    if train not in ("all", "head", "top"):
        raise ValueError(f"train must be 'all', 'head' or 'top', got {train!r}")
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise ValueError("freeze needs a task model with an `encoder` (e.g. EncoderForSequenceClassification)")
    num_layers = len(encoder.layers)
    if train == "top" and not 0 < top_layers <= num_layers:
        raise ValueError(f"top_layers must be in 1..{num_layers} with train='top', got {top_layers}")
    for p in model.parameters():
        p.requires_grad_(train == "all")
    if train != "all":
        for name, module in model.named_children():
            if name != "encoder":
                module.requires_grad_(True)
        for p in [p for n, p in model.named_parameters(recurse=False)]:
            p.requires_grad_(True)
        for layer in encoder.layers[num_layers - top_layers:] if train == "top" else []:
            layer.requires_grad_(True)
    return model
