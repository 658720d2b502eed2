"""ff.optimize on plain torch.nn module trees: torch modules become ff.nn drop-ins sharing their weights, and the
tree computes what it computed before (forward and gradients)."""
import copy

import pytest
import torch
from torch import nn

import fastformer as ff

D_MODEL, HEADS, SEQ, BATCH = 64, 2, 11, 3


class Mixed(nn.Module):
    """A tree with every swappable kind, nested at different depths."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
        self.blocks = nn.Sequential(nn.Linear(D_MODEL, D_MODEL), nn.LayerNorm(D_MODEL), nn.GELU(),
                                    nn.Sequential(nn.RMSNorm(D_MODEL, eps=1e-6)))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, key_padding_mask):
        attended, _ = self.attn(x, x, x, key_padding_mask=key_padding_mask, need_weights=False)
        return self.softmax(self.blocks(attended + x))


def _padding_mask():
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)  # torch's convention: True = padded
    mask[1, -4:] = True
    return mask


def test_mixed_tree_swaps_every_kind_with_its_weights():
    model = Mixed().eval()
    x, mask = torch.randn(BATCH, SEQ, D_MODEL), _padding_mask()
    with torch.no_grad():
        want = model(x, mask)
        optimized = ff.optimize(copy.deepcopy(model))
        got = optimized(x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert ff.optimization_report(optimized) == {"multihead_attention": 1, "layer_norm": 1, "rms_norm": 1,
                                                 "softmax": 1, "linear": 1}
    assert isinstance(optimized.attn, ff.nn.MultiheadAttention)
    assert isinstance(optimized.blocks[3][0], ff.nn.RMSNorm) and isinstance(optimized.softmax, ff.nn.Softmax)
    assert optimized.state_dict().keys() == model.state_dict().keys()


def test_linear_only_on_request_off_cpu_fp32():
    model = ff.optimize(Mixed(), linear=False)
    assert "linear" not in ff.optimization_report(model)
    assert type(model.blocks[0]) is nn.Linear


def _encoder(norm_first):
    layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=96, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_encoder_forward_and_gradients(norm_first):
    model = _encoder(norm_first)
    optimized = ff.optimize(copy.deepcopy(model))
    assert ff.optimization_report(optimized) == {"transformer_encoder_layer": 2, "linear": 4}
    layer = optimized.layers[0]
    assert isinstance(layer, ff.nn.TransformerEncoderLayer)
    assert isinstance(layer.self_attn, ff.nn.MultiheadAttention) and isinstance(layer.norm2, ff.nn.LayerNorm)
    x, mask = torch.randn(BATCH, SEQ, D_MODEL, requires_grad=True), _padding_mask()
    x2 = x.detach().clone().requires_grad_()
    want, got = model(x, src_key_padding_mask=mask), optimized(x2, src_key_padding_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(want)
    want.backward(grad)
    got.backward(grad)
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(model.named_parameters(), optimized.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


# The reference run takes torch's own eval fast path on purpose, which warns that nested tensors are a prototype.
@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors is in prototype stage:UserWarning")
def test_transformer_encoder_eval_fast_path_is_replaced():
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=96, batch_first=True),
                                  num_layers=2).eval()
    x, mask = torch.randn(BATCH, SEQ, D_MODEL), _padding_mask()
    with torch.no_grad():
        want = model(x, src_key_padding_mask=mask)  # torch's nested-tensor path: zeros at padded positions
        got = ff.optimize(model)(x, src_key_padding_mask=mask)
    kept = ~mask
    torch.testing.assert_close(got[kept], want[kept], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder_with_causal_mask(norm_first):
    layer = nn.TransformerDecoderLayer(D_MODEL, HEADS, dim_feedforward=96, dropout=0.0, batch_first=True,
                                       norm_first=norm_first)
    model = nn.TransformerDecoder(layer, num_layers=2).eval()
    tgt, memory = torch.randn(BATCH, 7, D_MODEL), torch.randn(BATCH, SEQ, D_MODEL)
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    with torch.no_grad():
        want = model(tgt, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=_padding_mask())
        optimized = ff.optimize(model)
        got = optimized(tgt, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=_padding_mask())
    assert ff.optimization_report(optimized) == {"transformer_decoder_layer": 2, "linear": 4}
    assert isinstance(optimized.layers[1].multihead_attn, ff.nn.MultiheadAttention)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_layer_constructor_and_from_torch_leave_the_torch_layer_alone():
    layer = ff.nn.TransformerEncoderLayer(D_MODEL, HEADS, dim_feedforward=96, batch_first=True, backend="reference")
    assert isinstance(layer.self_attn, ff.nn.MultiheadAttention) and layer.norm1.backend == "reference"
    torch_layer = nn.TransformerDecoderLayer(D_MODEL, HEADS, batch_first=True)
    ours = ff.nn.TransformerDecoderLayer.from_torch(torch_layer)
    assert type(torch_layer.self_attn) is nn.MultiheadAttention and type(torch_layer.norm3) is nn.LayerNorm
    assert ours.norm3.weight is torch_layer.norm3.weight


def test_shared_module_stays_shared():
    norm = nn.LayerNorm(D_MODEL)
    model = nn.ModuleDict({"a": nn.Sequential(norm), "b": nn.Sequential(norm)})
    ff.optimize(model)
    assert model["a"][0] is model["b"][0] and isinstance(model["a"][0], ff.nn.LayerNorm)
    assert ff.optimization_report(model) == {"layer_norm": 1}


def test_mlp_is_left_unchanged_with_a_warning():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.warns(UserWarning, match="nothing"):
        assert ff.optimize(model) is model
    assert ff.optimization_report(model) == {}
    assert all(type(m).__module__.startswith("torch") for m in model.modules())


def test_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        ff.optimize("bert")
    with pytest.raises(ValueError, match="backend"):
        ff.optimize(nn.LayerNorm(4), backend="tpu")


@pytest.mark.slow
def test_torch_compile_of_a_swapped_encoder():
    model = _encoder(norm_first=False).eval()
    x, mask = torch.randn(BATCH, SEQ, D_MODEL), _padding_mask()
    with torch.no_grad():
        want = model(x, src_key_padding_mask=mask)
        got = torch.compile(ff.optimize(copy.deepcopy(model), linear=False), fullgraph=True)(
            x, src_key_padding_mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
