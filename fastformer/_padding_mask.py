"""The one place a user's 0/1 attention mask becomes a bool key mask (encoders, decoders, generation)."""
from torch import Tensor


def padding_mask(attention_mask: Tensor | None, input_ids: Tensor, name: str = "attention_mask",
                 ids_name: str = "input_ids") -> Tensor | None:
    """A user's attention mask (bool, or 0/1 of any dtype; 1 = token, 0 = padding) as a bool [B, S] key mask,
    checked against input_ids [B, S]; None stays None. name, ids_name: the arguments' names in errors."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != tuple(input_ids.shape):
        got = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
        raise ValueError(f"{name} must have the shape of {ids_name} {tuple(input_ids.shape)}, got {got}")
    return attention_mask.bool()
