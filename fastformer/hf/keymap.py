"""Declarative weight maps from Hugging Face state_dict keys to fastformer parameter names.

A map is a list of (ours, theirs) patterns. `{i}` matches a layer number and `{w}` a parameter kind
(weight / bias); `{p}` in theirs is the checkpoint's base-model prefix ("bert.", "roberta.", ... or ""
for a bare base model). `theirs` may be a tuple: those tensors are concatenated along dim 0 (e.g. the
separate query/key/value projections into our fused QKV projection). A source wrapped in
`Transposed(...)` stores a 2-D weight as [in, out] (GPT-2's Conv1D) and is transposed to nn.Linear's
[out, in] on load; 1-D tensors (biases) are taken as they are.
"""
import re

import torch


class WeightMapError(ValueError):
    """Weights that the model needs are missing from the checkpoint, or do not fit."""


class Transposed(str):
    """A source key pattern whose 2-D tensor is stored [in, out] rather than nn.Linear's [out, in]."""


def _load(theirs: dict, key: str, source: str) -> torch.Tensor:
    tensor = theirs[key]
    return tensor.t() if isinstance(source, Transposed) and tensor.dim() == 2 else tensor


def _pattern(ours: str) -> re.Pattern:
    regex = re.escape(ours).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)")
    return re.compile(regex + "$")


def map_weights(keymap, ours: dict, theirs: dict, prefix: str, ignore=()) -> tuple[dict, list, list]:
    """Builds our state_dict from theirs. Returns (state_dict, missing ours, unexpected theirs)."""
    compiled = [(_pattern(o), t if isinstance(t, tuple) else (t,)) for o, t in keymap]
    state, missing, used = {}, [], set()
    for name, param in ours.items():
        for pattern, sources in compiled:
            match = pattern.match(name)
            if match is None:
                continue
            keys = [s.format(p=prefix, **match.groupdict()) for s in sources]
            if all(k in theirs for k in keys):
                tensors = [_load(theirs, k, s) for k, s in zip(keys, sources)]
                tensor = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
                if tensor.shape != param.shape:
                    raise WeightMapError(f"{' + '.join(keys)} has shape {tuple(tensor.shape)} but {name} needs "
                                         f"{tuple(param.shape)}: the config does not describe these weights")
                state[name] = tensor
                used.update(keys)
                break
        else:
            missing.append(name)
    unexpected = [k for k in theirs if k not in used and not any(re.search(p, k) for p in ignore)]
    return state, missing, unexpected
