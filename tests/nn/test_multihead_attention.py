"""ff.nn.MultiheadAttention against torch.nn.MultiheadAttention with the same weights, on every backend."""
import pytest
import torch

import fastformer as ff

BACKENDS = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu), "reference"]
EMBED, HEADS, BATCH, SEQ_Q, SEQ_K = 64, 2, 2, 9, 13  # head dim 32


@pytest.fixture
def on_backend(backend, attention_device, monkeypatch) -> torch.device:
    """Routes the module's ops to `backend` (modules take no backend argument) and returns its device."""
    monkeypatch.setenv("FASTFORMER_BACKEND", backend)
    return attention_device


def _pair(device, **kwargs):
    """(torch module, ff module) with identical weights, in eval mode."""
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(EMBED, HEADS, **kwargs).to(device).eval()
    ours = ff.nn.MultiheadAttention(EMBED, HEADS, **kwargs).to(device).eval()
    ours.load_state_dict(reference.state_dict())
    return reference, ours


def _layout(x, batch_first):
    """[B, S, E] -> the module's layout."""
    return x if batch_first else x.transpose(0, 1)


def _scenario(name, device, batch_first):
    """(constructor kwargs, forward args, forward kwargs) of a named scenario, fresh random data."""
    gen = torch.Generator().manual_seed(1)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    x = _layout(randn(BATCH, SEQ_Q, EMBED), batch_first)
    padding = torch.zeros(BATCH, SEQ_Q, dtype=torch.bool, device=device)
    padding[1, 5:] = True  # True = ignore (torch's convention)
    causal = torch.triu(torch.ones(SEQ_Q, SEQ_Q, dtype=torch.bool, device=device), 1)
    if name == "self_padding":
        return {}, (x, x, x), dict(key_padding_mask=padding)
    if name == "self_causal_hint":
        return {}, (x, x, x), dict(attn_mask=causal, is_causal=True)
    if name == "causal_and_padding":
        return {}, (x, x, x), dict(attn_mask=causal, key_padding_mask=padding)
    if name == "float_masks":
        float_padding = torch.zeros(BATCH, SEQ_Q, device=device).masked_fill(padding, float("-inf"))
        return {}, (x, x, x), dict(attn_mask=randn(SEQ_Q, SEQ_Q), key_padding_mask=float_padding)
    if name == "per_head_mask_3d":
        mask = torch.rand(BATCH * HEADS, SEQ_Q, SEQ_Q, generator=gen).to(device) < 0.3
        mask[..., 0] = False  # every query keeps a key
        return {}, (x, x, x), dict(attn_mask=mask)
    if name == "cross_kdim_vdim":
        key = _layout(randn(BATCH, SEQ_K, 48), batch_first)
        value = _layout(randn(BATCH, SEQ_K, 40), batch_first)
        kv_padding = torch.zeros(BATCH, SEQ_K, dtype=torch.bool, device=device)
        kv_padding[0, 10:] = True
        return dict(kdim=48, vdim=40), (x, key, value), dict(key_padding_mask=kv_padding)
    if name == "cross_shared_kv":
        memory = _layout(randn(BATCH, SEQ_K, EMBED), batch_first)
        return {}, (x, memory, memory), {}
    if name == "no_bias":
        return dict(bias=False), (x, x, x), {}
    if name == "unbatched":
        single = randn(SEQ_Q, EMBED)
        return {}, (single, single, single), dict(attn_mask=causal)
    raise ValueError(name)


# Every scenario batch-first; the sequence-first layout (torch's default) on the three whose projections
# and head splits differ most (packed self-attention, separate kdim/vdim projections, unbatched).
SCENARIOS = [(name, True) for name in ("self_padding", "self_causal_hint", "causal_and_padding", "float_masks",
                                       "per_head_mask_3d", "cross_kdim_vdim", "cross_shared_kv", "no_bias",
                                       "unbatched")]
SCENARIOS += [(name, False) for name in ("self_padding", "cross_kdim_vdim", "unbatched")]


@pytest.mark.parametrize("scenario,batch_first", SCENARIOS,
                         ids=[f"{name}-{'batch_first' if bf else 'seq_first'}" for name, bf in SCENARIOS])
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_torch_forward_and_backward(on_backend, batch_first, scenario):
    ctor, args, kwargs = _scenario(scenario, on_backend, batch_first)
    reference, ours = _pair(on_backend, batch_first=batch_first, **ctor)
    inputs = [a.clone().requires_grad_() for a in args]
    expected, _ = reference(*inputs, need_weights=False, **kwargs)
    out, weights = ours(*inputs, need_weights=False, **kwargs)
    assert weights is None
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    expected_grads = torch.autograd.grad(expected, [*inputs, *reference.parameters()], grad_out)
    grads = torch.autograd.grad(out, [*inputs, *ours.parameters()], grad_out)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("embed,heads", [(8, 8), (60, 5), (48, 2), (144, 2)], ids=["d1", "d12", "d24", "d72"])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_any_head_dim_runs_on_the_kernels(on_backend, monkeypatch, embed, heads):
    """Head dims with no GPU tile run on ff.ops.attention (not torch's fallback) and match torch."""
    from fastformer.nn import multihead_attention

    calls = []
    kernel = multihead_attention.attention
    monkeypatch.setattr(multihead_attention, "attention", lambda *a, **kw: calls.append(1) or kernel(*a, **kw))
    torch.manual_seed(0)
    reference = torch.nn.MultiheadAttention(embed, heads, batch_first=True).to(on_backend).eval()
    ours = ff.nn.MultiheadAttention.from_torch(reference)
    x = torch.randn(BATCH, SEQ_Q, embed, device=on_backend, requires_grad=True)
    padding = torch.zeros(BATCH, SEQ_Q, dtype=torch.bool, device=on_backend)
    padding[1, 5:] = True
    expected, _ = reference(x, x, x, key_padding_mask=padding, need_weights=False)
    out, _ = ours(x, x, x, key_padding_mask=padding, need_weights=False)
    assert calls, "ran torch's fallback, not the kernels"
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, grad_out)[0], torch.autograd.grad(expected, x, grad_out)[0],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference"])
def test_need_weights_falls_back_to_torch(on_backend):
    reference, ours = _pair(on_backend, batch_first=True)
    x = torch.randn(BATCH, SEQ_Q, EMBED, device=on_backend)
    for average in (True, False):
        expected = reference(x, x, x, average_attn_weights=average)
        got = ours(x, x, x, average_attn_weights=average)
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[1], expected[1])


@pytest.mark.parametrize("backend", ["reference"])
def test_add_bias_kv_and_zero_attn_fall_back_to_torch(on_backend):
    reference, ours = _pair(on_backend, add_bias_kv=True, add_zero_attn=True)
    x = torch.randn(SEQ_Q, BATCH, EMBED, device=on_backend)
    torch.testing.assert_close(ours(x, x, x, need_weights=False)[0], reference(x, x, x, need_weights=False)[0])


def test_state_dict_and_constructor_match_torch():
    for kwargs in ({}, dict(kdim=48, vdim=40, bias=False), dict(add_bias_kv=True, batch_first=True)):
        theirs = torch.nn.MultiheadAttention(EMBED, HEADS, **kwargs).state_dict()
        ours = ff.nn.MultiheadAttention(EMBED, HEADS, **kwargs).state_dict()
        assert list(ours) == list(theirs)
        assert all(ours[name].shape == theirs[name].shape for name in ours)
    assert isinstance(ff.nn.MultiheadAttention(EMBED, HEADS), torch.nn.MultiheadAttention)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_queries_give_zeros_not_nan(on_backend):
    _, ours = _pair(on_backend, batch_first=True)
    x = torch.randn(BATCH, SEQ_Q, EMBED, device=on_backend)
    mask = torch.zeros(SEQ_Q, SEQ_Q, dtype=torch.bool, device=on_backend)
    mask[3] = True  # query 3 may attend to nothing
    out, _ = ours(x, x, x, attn_mask=mask, need_weights=False)
    assert torch.isfinite(out).all()
    # Attention gives zeros for query 3, so only the out-projection bias remains.
    torch.testing.assert_close(out[:, 3], ours.out_proj.bias.expand(BATCH, EMBED))


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_dropout_is_reproducible(on_backend):
    _, ours = _pair(on_backend, batch_first=True, dropout=0.5)
    ours.train()
    x = torch.randn(BATCH, SEQ_Q, EMBED, device=on_backend)
    torch.manual_seed(3)
    first, _ = ours(x, x, x, need_weights=False)
    torch.manual_seed(3)
    again, _ = ours(x, x, x, need_weights=False)
    assert torch.equal(first, again)
    ours.eval()
    eval_out, _ = ours(x, x, x, need_weights=False)
    assert not torch.allclose(first, eval_out)


def test_is_causal_without_mask_is_an_error_like_torch():
    ours = ff.nn.MultiheadAttention(EMBED, HEADS)
    x = torch.randn(SEQ_Q, BATCH, EMBED)
    with pytest.raises(RuntimeError, match="Need attn_mask"):
        ours(x, x, x, need_weights=False, is_causal=True)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_compile_fullgraph(on_backend):
    reference, ours = _pair(on_backend, batch_first=True)
    x = torch.randn(BATCH, SEQ_Q, EMBED, device=on_backend, requires_grad=True)
    padding = torch.zeros(BATCH, SEQ_Q, dtype=torch.bool, device=on_backend)
    padding[0, 6:] = True
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True)
    out, _ = compiled(x, x, x, key_padding_mask=padding, need_weights=False)
    expected, _ = reference(x, x, x, key_padding_mask=padding, need_weights=False)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    (grad,) = torch.autograd.grad(out.sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.sum(), x)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5)
