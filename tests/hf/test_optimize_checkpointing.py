"""Gradient checkpointing on an optimized model goes through transformers' own path: every checkpointing layer
calls its _gradient_checkpointing_func, the fused blocks run again in the backward pass, gradients equal the
unoptimized model's, and the activations kept for backward shrink as much as they do without fastformer."""
import copy

import pytest
import torch

import fastformer as ff
from fastformer.hf.fused_blocks import is_fused
from tests.hf.test_optimize import CASES, _build, _loss, assert_same_gradients

transformers = pytest.importorskip("transformers")

# One trainable head per family.
CHECKPOINTED = ["BertForMaskedLM", "RobertaForMaskedLM", "DistilBertForSequenceClassification", "GPT2LMHeadModel",
                "T5ForConditionalGeneration", "BartForConditionalGeneration", "MarianMTModel"]


def _family(cls):
    return next(f for f, c in CASES if c is cls)


def _checkpointing_layers(model):
    return [m for m in model.modules() if isinstance(m, transformers.modeling_layers.GradientCheckpointingLayer)]


def _count_checkpoint_calls(model) -> list:
    """Wraps every layer's _gradient_checkpointing_func (set by gradient_checkpointing_enable) with a counter."""
    calls = []
    for layer in _checkpointing_layers(model):
        def counting(*args, _checkpoint=layer._gradient_checkpointing_func, **kwargs):
            calls.append(1)
            return _checkpoint(*args, **kwargs)
        layer._gradient_checkpointing_func = counting
    return calls


def _count_norm_calls(model) -> list:
    """Counts forwards of the LayerNorms inside fused blocks (a recomputed block runs its norms again)."""
    calls = []
    for block in filter(is_fused, model.modules()):
        for norm in block.modules():
            if isinstance(norm, ff.nn.LayerNorm):
                norm.register_forward_hook(lambda *_: calls.append(1))
    return calls


def _saved_bytes(model, family, cls) -> tuple[int, torch.Tensor]:
    """Bytes of the tensors autograd keeps for the backward pass of one loss (checkpointed regions keep only their
    inputs; their own saved tensors go to the checkpoint's inner hooks), and the loss."""
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(model, family, cls)
    return sum(saved), loss


@pytest.mark.parametrize("name", CHECKPOINTED)
def test_gradient_checkpointing_recomputes_fused_blocks(name):
    cls = getattr(transformers, name)
    family = _family(cls)
    plain = _build(family, cls).train()
    optimized = ff.optimize(copy.deepcopy(plain))
    bytes_without = {id(m): _saved_bytes(m, family, cls)[0] for m in (plain, optimized)}
    for model in (plain, optimized):
        model.zero_grad()
        # transformers 5.25 renamed it (the old name warns); 5.17 has only gradient_checkpointing_enable.
        enable = getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)
        enable()
    checkpoint_calls = _count_checkpoint_calls(optimized)
    norm_calls = _count_norm_calls(optimized)
    bytes_with = {}
    for model in (plain, optimized):
        bytes_with[id(model)], loss = _saved_bytes(model, family, cls)
        norms_in_forward = len(norm_calls)
        loss.backward()
    assert len(checkpoint_calls) == len(_checkpointing_layers(optimized)) > 0
    if family != "t5":  # T5 (pre-norm) has no fused blocks
        # Recomputed in backward (torch's non-reentrant checkpoint stops a replay once it has every saved tensor,
        # so a block's last norm may not run again).
        assert norms_in_forward > 0 and len(norm_calls) > norms_in_forward
    for model in (plain, optimized):
        assert bytes_with[id(model)] < 0.8 * bytes_without[id(model)]
    assert bytes_with[id(optimized)] <= 1.05 * bytes_with[id(plain)]
    assert_same_gradients(optimized, plain)
