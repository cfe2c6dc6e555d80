"""nowt.convert: what it swaps and keeps, its errors; feedback state through state_dict, .to, deepcopy."""

import copy
import re

import pytest
import torch
from conftest import per_layer_rules, tiny_convnet, tiny_mlp
from torch import nn

import nowt


def test_convert_keeps_parameters_device_dtype_and_mode():
    model = tiny_convnet().eval()
    params = list(model.parameters())
    out = model(torch.randn(2, 4, 8, 8, dtype=torch.double))
    assert nowt.convert(model, "fa", seed=0) is model
    assert [id(p) for p in model.parameters()] == [id(p) for p in params]  # same Parameter objects
    assert isinstance(model[0], nn.Conv2d) and isinstance(model[0], nowt.Conv2d)
    assert isinstance(model[4], nn.Linear) and model[4].rule == "fa"
    assert not model[0].training
    assert model[0].feedback.dtype == torch.double and model[0].feedback.shape == model[0].weight.shape
    torch.testing.assert_close(model(torch.randn(2, 4, 8, 8, dtype=torch.double)).shape, out.shape)


def test_forward_is_unchanged_by_conversion():
    ref = tiny_convnet()
    x = torch.randn(2, 4, 8, 8, dtype=torch.double)
    for rule in per_layer_rules(any_model=True):
        model = nowt.convert(copy.deepcopy(ref), rule, seed=0)
        assert torch.equal(model(x), ref(x)), rule


def test_unknown_rule_names_the_known_rules():
    known = re.escape(", ".join(nowt.list_rules()))  # every rule in the registry, in its order
    with pytest.raises(ValueError, match=r"unknown rule 'nope'.*known rules: " + known):
        nowt.convert(tiny_mlp(), "nope")


def test_unknown_option_is_named():
    with pytest.raises(ValueError, match=r"unknown option.*'sclae'.*init, scale"):
        nowt.convert(tiny_mlp(), "fa", sclae=2.0)
    with pytest.raises(ValueError, match="unknown init"):
        nowt.convert(tiny_mlp(), "fa", init="orthogonal")


def test_nothing_to_convert():
    with pytest.raises(ValueError, match="nothing to convert") as e:
        nowt.convert(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)), "fa")
    kinds = ("Linear", "Conv1d", "LocallyConnected2d", "MultiheadAttention")
    assert all(kind in str(e.value) for kind in kinds)
    assert "NonDynamicallyQuantizableLinear" not in str(e.value)  # a Linear: named once


def test_converting_twice_is_refused():
    model = nowt.convert(tiny_mlp(), "fa")
    with pytest.raises(ValueError, match="already converted"):
        nowt.convert(model, "kp")


def test_unsupported_layers_raise_unless_excluded():
    model = nn.ModuleDict({"0": nn.GRU(2, 3), "head": nn.Linear(3, 2)})
    with pytest.raises(ValueError, match=r"torch\.nn\.modules\.rnn\.GRU at '0'.*exclude"):
        nowt.convert(model, "fa")
    nowt.convert(model, "fa", exclude=[nn.GRU])
    assert type(model["0"]) is nn.GRU and model["head"].rule == "fa"


def test_exclude_by_name_pattern_and_type_leaves_backprop():
    model = nowt.convert(tiny_convnet(), "fa", exclude=["4"])
    assert model[4].rule == "bp" and model[0].rule == "fa" and model[2].rule == "fa"
    model = nowt.convert(tiny_convnet(), "kp", exclude=[nn.Conv2d])
    assert [model[i].rule.name for i in (0, 2, 4)] == ["bp", "bp", "kp"]
    nested = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3)), nn.Linear(3, 1))
    nowt.convert(nested, "fa", exclude=["0.*"])
    assert [m.rule.name for m in nowt.feedback_layers(nested).values()] == ["bp", "bp", "fa"]


def test_bare_layer_is_returned_converted():
    layer = nowt.convert(nn.Linear(3, 2), "fa", seed=0)
    assert isinstance(layer, nowt.Linear) and layer.feedback.shape == (2, 3)


def test_feedback_is_a_buffer_in_state_dict_and_round_trips():
    a = nowt.convert(tiny_mlp(), "fa", seed=0)
    b = nowt.convert(tiny_mlp(), "fa", seed=1)
    assert "0.feedback" in a.state_dict() and "0.feedback" not in dict(a.named_parameters())
    assert not torch.equal(a[0].feedback, b[0].feedback)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a[0].feedback, b[0].feedback)
    c = copy.deepcopy(a)
    assert torch.equal(c[2].feedback, a[2].feedback) and c[2].feedback is not a[2].feedback
    a.to(torch.float32)
    assert a[0].feedback.dtype == torch.float32
    for rule in per_layer_rules():
        src = nowt.convert(tiny_mlp(), rule, seed=0)
        src(torch.randn(2, 5, dtype=torch.double))
        dst = nowt.convert(tiny_mlp(), rule, seed=5)
        dst.load_state_dict(src.state_dict())
        assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items()), rule


def test_brsf_resumes_its_draw_sequence_from_state_dict():
    a = nowt.convert(tiny_mlp(), "brsf", seed=0)
    x = torch.randn(2, 5, dtype=torch.double)
    a(x)
    b = nowt.convert(tiny_mlp(), "brsf", seed=9)
    b.load_state_dict(a.state_dict())
    a(x)
    b(x)
    assert torch.equal(a[0].feedback, b[0].feedback)


def test_autocast_bf16_forward_and_backward():
    model = nowt.convert(nowt.models.convnet(3, 10, 4, 8), "fa", seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 8, 8))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_resnets_convert_and_torchvision_models_say_what_they_need():
    import importlib.util

    model = nowt.convert(nowt.models.create_model("resnet20"), "fa", seed=0)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.layer1[0].conv1, nowt.Conv2d) and isinstance(model.bn1, nn.BatchNorm2d)
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(ValueError, match="needs torchvision"):
            nowt.models.create_model("tv_resnet18")
    else:  # torchvision's own ResNet converts like any model
        tv = nowt.convert(nowt.models.create_model("tv_resnet18", num_classes=10), "kp", seed=0)
        tv(torch.randn(2, 3, 64, 64)).sum().backward()
        assert tv.fc.feedback.grad is not None


class Shared(nn.Module):
    """One nn.Linear registered under two names (`m.b = m.a`), and a Sequential shared the same way."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4).double()
        self.b = self.a
        self.seq = nn.Sequential(nn.Linear(4, 4).double(), nn.Tanh())
        self.seq2 = self.seq

    def forward(self, x):
        return self.seq2(self.b(self.seq(self.a(x))))


def test_a_layer_shared_by_two_names_is_converted_once_under_both():
    m = nowt.convert(Shared(), "fa", seed=0)
    assert m.a is m.b and isinstance(m.b, nowt.Linear) and m.seq2[0] is m.seq[0]
    assert not [n for n, mod in m.named_modules(remove_duplicate=False)
                if isinstance(mod, nn.Linear) and not isinstance(mod, nowt.Linear)]
    # no weight transport through either name: the input gradient through `b` uses B, not W
    x = torch.randn(3, 4, dtype=torch.double, requires_grad=True)
    g = torch.randn(3, 4, dtype=torch.double)
    m.b(x).backward(g)
    assert torch.allclose(x.grad, g @ m.a.feedback) and not torch.allclose(x.grad, g @ m.a.weight)
    assert m.b.feedback is m.a.feedback
    assert nowt.convert(Shared(), "fa", seed=0, exclude=["a", "b"]).b.rule == "bp"
    with pytest.raises(ValueError, match="'b' is the same module as excluded 'a'.*all its names or none"):
        nowt.convert(Shared(), "fa", seed=0, exclude=["a"])


def test_meta_device_models_are_refused_until_materialised():
    with torch.device("meta"):
        meta = tiny_mlp()
    with pytest.raises(ValueError, match=r"layer '0'.*meta device.*to_empty\(device=...\).*then convert"):
        nowt.convert(meta, "fa", seed=0)
    meta.to_empty(device="cpu")
    for layer in meta[::2]:
        layer.reset_parameters()
    model = nowt.convert(meta, "fa", seed=0)
    assert all(torch.isfinite(lay.feedback).all() and lay.feedback.abs().max() < 10 for lay in model[::2])


#: Each rule whose layers store its name, against the next one in the registry (bp stores none: below).
NAMED = [r for r in per_layer_rules() if "0.rule" in nowt.convert(tiny_mlp(), r).state_dict()]


@pytest.mark.parametrize("src, dst", list(zip(NAMED, NAMED[1:] + NAMED[:1], strict=True)))
def test_state_dict_of_another_rule_is_refused(src, dst):
    state = nowt.convert(tiny_mlp(), src, seed=0).state_dict()
    assert bytes(state["0.rule"].tolist()) == src.encode()
    target = nowt.convert(tiny_mlp(), dst, seed=1)
    with pytest.raises(ValueError, match=f"layer '0' was written by rule '{src}'.*trained by '{dst}'"):
        target.load_state_dict(state)
    # written before rule names were stored: loads as before
    nowt.convert(tiny_mlp(), src, seed=1).load_state_dict({k: v for k, v in state.items()
                                                           if not k.endswith(".rule")})
    # backprop state has no feedback, so no name: it still loads into a plain model
    bp_state = nowt.convert(tiny_mlp(), "bp").state_dict()
    assert not [k for k in bp_state if k.endswith(".rule")]
    tiny_mlp().load_state_dict(bp_state)


@pytest.mark.parametrize("rule", per_layer_rules(any_model=True))
def test_a_converted_model_pickles_whole(rule):
    """torch.save(model) of a converted model (its hooks are module-level functions, not closures), and the
    loaded copy computes the same gradients."""
    import io
    torch.manual_seed(0)
    model = nowt.convert(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5),
                                       nn.Tanh(), nn.Linear(5, 3)), rule, seed=0)
    x = torch.randn(4, 1, 8, 8)
    model(x).square().sum().backward()  # DFA makes its B at the first forward: pickle it made
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    copy_ = torch.load(buf, weights_only=False)
    for m in (model, copy_):
        m.zero_grad()
        torch.manual_seed(1)  # brsf draws per forward from its own seed and counter, the same in both
        m(x).square().sum().backward()
    for (name, p), q in zip(model.named_parameters(), copy_.parameters(), strict=True):
        assert p.grad is not None and torch.equal(p.grad, q.grad), name


class _TiedPair(nn.Module):
    """Two Linear modules holding one weight Parameter (`b.weight = a.weight`), as tied projections do."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 5), nn.Linear(5, 5)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_kp_layers_sharing_a_weight_share_b_so_it_converges_to_w():
    # Each layer drew its own B, and each took one use's share of the gradient W summed: |W - B| stayed 0.6.
    torch.manual_seed(0)
    x, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    model = nowt.convert(_TiedPair(), "kp", seed=0)
    assert model.a.feedback is model.b.feedback
    assert sum(p is model.a.feedback for p in model.parameters()) == 1  # the optimizer steps it once
    opt = torch.optim.SGD(model.parameters(), lr=0.2, weight_decay=0.5)
    for _ in range(300):  # W - B shrinks by 1 - lr * decay = 0.9 a step: 0.9^300 ~ 2e-14
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert (model.a.weight - model.a.feedback).abs().max() < 1e-6


@pytest.mark.parametrize(("rule", "state"), [("fa", "feedback"), ("frsf", "feedback_magnitude")])
def test_fixed_feedback_is_drawn_once_for_a_shared_weight(rule, state):
    model = nowt.convert(_TiedPair(), rule, seed=0)
    assert getattr(model.a, state) is getattr(model.b, state)
    assert model.a.draw_state is model.b.draw_state  # a redraw after `to_empty` draws it once too
    plain = nowt.convert(nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)), "usf", seed=0)
    assert plain[0].feedback is not plain[1].feedback  # untied layers keep their own
