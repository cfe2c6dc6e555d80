"""Rule-trained attention: nn.MultiheadAttention's projections learn by the rule, softmax(QK^T)V by
autograd."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules
from torch import nn

import nowt
from nowt.attention import MultiheadAttention

RULES = per_layer_rules(any_model=True)  # every rule that converts any model, read from the registry


class SDPAModel(nn.Module):
    """Attention written by hand: Linear projections around F.scaled_dot_product_attention."""

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.heads, self.qkv, self.proj, self.head = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), \
            nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).flatten(2)
        return self.head((x + self.proj(a)).mean(1))


class Encoder(nn.Module):
    def __init__(self, batch_first: bool = True, decoder: bool = False) -> None:
        super().__init__()
        self.batch_first, self.decoder = batch_first, decoder
        kind = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
        self.layer = kind(8, 2, 16, dropout=0.1, batch_first=batch_first)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x if self.batch_first else x.transpose(0, 1)
        y = self.layer(seq, seq) if self.decoder else self.layer(seq)
        return self.head((y if self.batch_first else y.transpose(0, 1)).mean(1))


MODELS = {"encoder": Encoder, "encoder_seq_first": lambda: Encoder(batch_first=False),
          "decoder": lambda: Encoder(decoder=True), "sdpa": SDPAModel}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("rule", RULES)
def test_transformers_convert_in_one_call_and_train_a_step(name, rule):
    if rule == "dfa" and name == "encoder_seq_first":
        pytest.skip("dfa needs every layer to see the batch along dim 0: use batch_first=True")
    model = nowt.convert(MODELS[name](), rule, seed=0)
    layers = nowt.feedback_layers(model)
    if name != "sdpa":
        assert all(type(m) is not nn.Linear for m in model.modules())  # out_proj too
        assert {"layer.self_attn.in_proj", "layer.self_attn.out_proj"} <= set(layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = torch.randn(4, 5, 8), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    if rule == "wm":
        nowt.mirror(model)
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert {n for n in before if n.endswith("weight") and ".norm" not in n} <= moved
    assert all(not math.isnan(v) for v in nowt.update_angles(model, F.cross_entropy, x, y).values())
    if rule != "dfa":
        assert set(nowt.weight_angles(model)) == set(layers)


def test_backprop_attention_matches_torch_and_keeps_its_state_dict():
    torch.manual_seed(0)
    for kwargs in ({}, {"batch_first": True}, {"kdim": 3, "vdim": 5}):
        ref = nn.MultiheadAttention(8, 2, **kwargs).double()
        model = nowt.convert(copy.deepcopy(ref), "bp")
        assert isinstance(model, MultiheadAttention) and isinstance(model.out_proj, nowt.Linear)
        assert list(model.state_dict()) == list(ref.state_dict())
        q = torch.randn(4, 3, 8, dtype=torch.double)
        k = torch.randn(5, 3, kwargs.get("kdim", 8), dtype=torch.double)
        v = torch.randn(5, 3, kwargs.get("vdim", 8), dtype=torch.double)
        if kwargs.get("batch_first"):
            q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q.requires_grad_()
        pad = torch.zeros(3, 5, dtype=torch.bool)
        pad[0, -1] = True
        mask = torch.randn(4, 5, dtype=torch.double)
        for opts in ({}, {"need_weights": False, "key_padding_mask": pad}, {"attn_mask": mask}):
            (a, wa), (b, wb) = ref(q, k, v, **opts), model(q, k, v, **opts)
            torch.testing.assert_close(a, b)
            assert (wa is None) == (wb is None) and (wa is None or torch.allclose(wa, wb))
            ga = torch.autograd.grad(a.square().sum(), [q, *ref.parameters()])
            gb = torch.autograd.grad(b.square().sum(), [q, *model.parameters()])
            for x, y in zip(ga, gb, strict=True):
                torch.testing.assert_close(x, y)


def _through(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x W^T + bias in value, with its input gradient through B: the reference for a feedback layer."""
    return F.linear(x.detach(), w, bias) + F.linear(x, b) - F.linear(x, b).detach()


def test_fa_attention_sends_errors_through_b_and_attention_through_autograd():
    torch.manual_seed(0)
    mha = nowt.convert(nn.MultiheadAttention(6, 2, batch_first=True).double(), "fa", seed=0)
    x = torch.randn(2, 4, 6, dtype=torch.double, requires_grad=True)
    out, _ = mha(x, x, x, need_weights=False)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    xr = x.detach().clone().requires_grad_()
    qkv = _through(xr, mha.in_proj_weight, mha.in_proj.feedback, mha.in_proj_bias)
    q, k, v = (t.unflatten(-1, (2, 3)).transpose(1, 2) for t in qkv.chunk(3, -1))
    a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
    ref = _through(a, mha.out_proj.weight, mha.out_proj.feedback, mha.out_proj.bias)
    torch.testing.assert_close(ref, out)
    torch.testing.assert_close(torch.autograd.grad(ref, xr, g)[0], gx)


def test_cross_attention_gradients_are_those_of_the_slices():
    """Distinct query and key/value inputs: each takes its rows of the packed W and B."""
    torch.manual_seed(0)
    mha = nowt.convert(nn.MultiheadAttention(4, 1, batch_first=True).double(), "fa", seed=0)
    q = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    kv = torch.randn(2, 5, 4, dtype=torch.double, requires_grad=True)
    out = mha(q, kv, kv)[0]
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [q, kv, mha.in_proj_weight], g)
    qr, kvr = (t.detach().clone().requires_grad_() for t in (q, kv))
    w, b, bias = mha.in_proj_weight.detach().requires_grad_(), mha.in_proj.feedback, mha.in_proj_bias
    parts = [_through(x, w[r], b[r], bias[r]).unflatten(-1, (1, 4)).transpose(1, 2)
             for x, r in ((qr, slice(0, 4)), (kvr, slice(4, 8)), (kvr, slice(8, 12)))]
    a = F.scaled_dot_product_attention(*parts).transpose(1, 2).flatten(2)
    ref = _through(a, mha.out_proj.weight, mha.out_proj.feedback, mha.out_proj.bias)
    for x, y in zip(torch.autograd.grad(ref, [qr, kvr, w], g), grads, strict=True):
        torch.testing.assert_close(x, y)


def test_separate_qkv_weights_get_one_projection_each():
    mha = nowt.convert(nn.MultiheadAttention(4, 2, kdim=3, vdim=5), "kp", seed=0)
    assert [n for n, _ in mha.named_children()] == ["out_proj", "q_proj", "k_proj", "v_proj"]
    assert mha.k_proj.weight is mha.k_proj_weight and mha.k_proj.feedback.shape == (4, 3)
    assert isinstance(mha.v_proj.feedback, nn.Parameter)


@pytest.mark.parametrize("options", [{"add_bias_kv": True}, {"add_zero_attn": True},
                                     {"add_bias_kv": True, "add_zero_attn": True}])
def test_extra_keys_and_values_match_torch(options):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(4, 2, **options)
    nn.init.normal_(ref.bias_k) if ref.bias_k is not None else None
    model = nowt.convert(copy.deepcopy(ref), "bp")
    q, kv = torch.randn(3, 2, 4), torch.randn(5, 2, 4)
    pad = torch.tensor([[False] * 4 + [True], [False] * 5])
    for opts in ({}, {"key_padding_mask": pad, "attn_mask": torch.zeros(3, 5, dtype=torch.bool)}):
        for a, b in zip(ref(q, kv, kv, **opts), model(q, kv, kv, **opts), strict=True):
            torch.testing.assert_close(a, b)


def test_causal_and_unbatched_calls_match_torch():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(4, 2)
    model = nowt.convert(copy.deepcopy(ref), "fa", seed=0)
    x = torch.randn(5, 4)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(model(x, x, x)[0], ref(x, x, x)[0])
    torch.testing.assert_close(model(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0],
                               ref(x, x, x, attn_mask=mask, is_causal=True, need_weights=False)[0])
    with pytest.raises(RuntimeError, match="is_causal"):
        model(x, x, x, is_causal=True)


@pytest.mark.parametrize("name", ["vit", "conv1d"])
@pytest.mark.parametrize("rule", RULES)
def test_registered_vit_and_conv1d_train_a_step(name, rule):
    torch.manual_seed(0)
    model = nowt.convert(nowt.models.create_model(name, in_channels=1, num_classes=10, image_size=28), rule,
                         seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and all(torch.isfinite(p).all() for p in model.parameters())


def test_encoder_layer_in_eval_without_grad_still_runs_the_converted_layers():
    model = nowt.convert(nowt.models.create_model("vit"), "wm", seed=0).eval()
    ref = model(torch.randn(2, 1, 28, 28))
    with torch.no_grad():
        model(torch.randn(3, 1, 28, 28))
    assert ref.shape == (2, 10)
    assert all(m.last_input_shape[0] == 3 for m in nowt.feedback_layers(model).values())


class _Window(nn.Module):
    """Swin-style: tokens folded into windows of 2 (batch * windows rows), qkv and proj applied by F.linear
    on the children's weights (`functional`) or by calling the children; V2's key-bias copy optional."""

    functional: bool

    def __init__(self, zero_key_bias: bool = False) -> None:
        super().__init__()
        self.zero_key_bias, self.qkv, self.proj = zero_key_bias, nn.Linear(4, 12), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.unflatten(1, (-1, 2)).flatten(0, 1)  # (N * L / 2, 2, C)
        bias = self.qkv.bias
        if self.zero_key_bias:
            bias = torch.cat([bias[:4], torch.zeros_like(bias[4:8]), bias[8:]])
        qkv = F.linear(w, self.qkv.weight, bias) if self.functional else self.qkv(w)
        q, k, v = (t.unflatten(-1, (2, 2)).transpose(1, 2) for t in qkv.chunk(3, -1))
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return (F.linear(a, self.proj.weight, self.proj.bias) if self.functional else self.proj(a)).view_as(x)


class WindowAttention(_Window):
    functional = True


class CalledWindowAttention(_Window):
    functional = False


class WindowNet(nn.Module):
    def __init__(self, attention: type[nn.Module] = WindowAttention, **kwargs) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(3, 4), attention(**kwargs), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x)).mean(1))


@pytest.mark.parametrize("rule", ["fa", "kp", "bp"])
def test_routed_f_linear_calls_train_like_module_calls(monkeypatch, rule):
    """A module calling F.linear on its children's weights (as torchvision's Swin does) learns by the rule
    exactly as if it called the children; under bp it is the unconverted module, key-bias copy included."""
    from nowt.attention import RoutedAttention
    from nowt.layers import CONVERTIBLE

    routed = type("Routed", (RoutedAttention, WindowAttention), {"linear_names": ("qkv", "proj")})
    monkeypatch.setitem(CONVERTIBLE, WindowAttention, routed)
    x = torch.randn(3, 6, 3, dtype=torch.double)
    grads, state = [], None
    for attention in (WindowAttention, CalledWindowAttention):
        model = nowt.convert(WindowNet(attention).double(), rule, seed=0)
        state = state or model.state_dict()
        model.load_state_dict(state)  # the same W and B (the routed module takes a seed of its own)
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)
    torch.manual_seed(0)
    ref = WindowNet(zero_key_bias=True).double()
    model = nowt.convert(copy.deepcopy(ref), "bp")
    assert isinstance(model.attn, routed) and model.attn.qkv.last_input_shape is None
    for m in (ref, model):
        m(x).square().sum().backward()
    assert model.attn.qkv.last_input_shape == (3, 6, 4)  # refolded to the batch: DFA sees it on dim 0
    torch.testing.assert_close(model(x), ref(x))
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)
    assert ref.attn.qkv.bias.grad[4:8].abs().sum() == 0 < ref.attn.qkv.bias.grad[:4].abs().sum()
