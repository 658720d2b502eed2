"""Declarative weight maps from Hugging Face state_dict keys to fastformer parameter names.

A map is a list of (ours, theirs) patterns. `{i}` matches a layer number and `{w}` a parameter kind
(weight / bias); `{p}` in theirs is the checkpoint's base-model prefix ("bert.", "roberta.", ... or ""
for a bare base model). `theirs` may be a tuple: those tensors are concatenated along dim 0 (e.g. the
separate query/key/value projections into our fused QKV projection).
"""
import re

import torch


class WeightMapError(ValueError):
    """Weights that the model needs are missing from the checkpoint, or do not fit."""


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
                tensor = torch.cat([theirs[k] for k in keys]) if len(keys) > 1 else theirs[keys[0]]
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
