"""nowt.convert on the layers other libraries build: every weight accounted for, convertible subclasses
converted, the rest refused by name, and what the replaced module accepted still accepted.

timm and torchvision are not installed here: their classes are reproduced by small local classes with the
same structure (and, where nowt recognises them by class path, the same `__module__` and name)."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_mlp
from torch import nn
from torch.nn.utils import parametrizations

import nowt


def _grads(model, x):
    model.zero_grad()
    x = x.clone().requires_grad_()
    model(x).square().sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()]


def _assert_bp_is_autograd(make, x):
    """Converted under bp, the model computes exactly plain autograd's output and gradients."""
    torch.manual_seed(0)
    plain = make()
    converted = nowt.convert(copy.deepcopy(plain), "bp")
    assert torch.equal(plain(x), converted(x))
    for a, b in zip(_grads(plain, x), _grads(converted, x), strict=True):
        assert torch.equal(a, b)


# --- weights nowt does not know: an error naming the class path -----------------------------------

class Mixer(nn.Module):
    """A module holding its own weight matrix, used by matmul: nowt cannot train it by a rule."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Parameter(torch.randn(4, 4))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))  # added, not multiplied: by design

    def forward(self, x):
        return x @ self.mix + self.cls_token[0, 0]


def test_a_weight_matrix_in_an_unknown_module_is_named_with_its_class_path():
    model = nn.Sequential(nn.Linear(3, 4), Mixer(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"test_convert_zoo\.Mixer at '1' \(weight 'mix', \(4, 4\)\).*"
                                         r"exclude"):
        nowt.convert(model, "fa")
    with pytest.warns(UserWarning, match=r"Mixer at '1'"):
        nowt.convert(copy.deepcopy(model), "fa", unknown="warn")
    for excluded in (["1"], ["1.mix"], [Mixer]):
        converted = nowt.convert(copy.deepcopy(model), "fa", exclude=excluded)
        assert converted[0].rule == "fa" and converted[2].rule == "fa"
    with pytest.raises(ValueError, match="unknown='maybe'"):
        nowt.convert(copy.deepcopy(model), "fa", unknown="maybe")


def test_nowts_own_models_account_for_every_weight():
    for name in ("vit", "resnet20", "mnist_fc"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nowt.convert(nowt.models.create_model(name), "fa", seed=0)


# --- subclasses -----------------------------------------------------------------------------------

class Conv3DSimple(nn.Conv3d):
    """torchvision.models.video.resnet.Conv3DSimple: a Conv3d subclass with its own __init__, no forward."""

    def __init__(self, in_planes, out_planes, midplanes=None, stride=1, padding=1):
        super().__init__(in_planes, out_planes, kernel_size=(3, 3, 3), stride=stride, padding=padding,
                         bias=False)

    @staticmethod
    def get_downsample_stride(stride):
        return stride, stride, stride


def _timm(cls, module: str):
    cls.__module__ = module
    return cls


@lambda c: _timm(c, "timm.layers.linear")
class Linear(nn.Linear):
    """timm.layers.linear.Linear: forward casts dtypes under TorchScript only, else F.linear."""

    def forward(self, input):
        if torch.jit.is_scripting():
            bias = self.bias.to(dtype=self.weight.dtype) if self.bias is not None else None
            return F.linear(input, self.weight.to(dtype=input.dtype), bias=bias)
        return F.linear(input, self.weight, self.bias)


def _same_pad(x, k, s, d):
    pads = [max((math.ceil(n / st) - 1) * st + (kk - 1) * dd + 1 - n, 0)
            for n, kk, st, dd in zip(x.shape[-2:], k, s, d, strict=True)]
    return F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))


@lambda c: _timm(c, "timm.layers.conv2d_same")
class Conv2dSame(nn.Conv2d):
    """timm.layers.conv2d_same.Conv2dSame: TensorFlow 'SAME' padding from each input's size, then conv2d."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True):
        super().__init__(in_channels, out_channels, kernel_size, stride, 0, dilation, groups, bias)

    def forward(self, x):
        x = _same_pad(x, self.weight.shape[-2:], self.stride, self.dilation)
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


@lambda c: _timm(c, "timm.layers.std_conv")
class StdConv2d(nn.Conv2d):
    """timm.layers.std_conv.StdConv2d (BiT): the weight standardised per output channel inside forward."""

    def __init__(self, in_channel, out_channels, kernel_size, stride=1, padding=1, bias=False, eps=1e-6):
        super().__init__(in_channel, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


@lambda c: _timm(c, "timm.layers.std_conv")
class ScaledStdConv2d(nn.Conv2d):
    """timm.layers.std_conv.ScaledStdConv2d (NFNet): standardised, times a learned gain and a fixed scale."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=1, bias=True, gamma=1.0,
                 eps=1e-6, gain_init=1.0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        self.gain = nn.Parameter(torch.full((self.out_channels, 1, 1, 1), gain_init))
        self.scale = gamma * self.weight[0].numel() ** -0.5
        self.eps = eps

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0,
                         eps=self.eps).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class OwnForward(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class ExtraState(nn.Linear):
    """Keeps nn.Linear's forward but holds a parameter of its own, which a swap would drop."""

    def __init__(self, *args):
        super().__init__(*args)
        self.scale = nn.Parameter(torch.ones(1))


def test_subclasses_that_keep_the_op_convert_and_train_by_the_rule():
    x = torch.randn(2, 2, 5, 6, 6)
    _assert_bp_is_autograd(lambda: nn.Sequential(Conv3DSimple(2, 3, stride=2), nn.Flatten(),
                                                 Linear(3 * 27, 2)), x)
    for stride in (1, 2):
        _assert_bp_is_autograd(lambda s=stride: nn.Sequential(Conv2dSame(2, 3, 3, stride=s), nn.Tanh(),
                                                              Conv2dSame(3, 2, 4, stride=s)),
                               torch.randn(2, 2, 7, 6))
    model = nowt.convert(nn.Sequential(Conv3DSimple(2, 3), nn.Flatten(), Linear(3 * 5 * 6 * 6, 2)), "fa")
    assert isinstance(model[0], nowt.layers.Conv3d) and isinstance(model[2], nowt.Linear)
    model(x).sum().backward()
    assert model[0].weight.grad is not None


def test_weight_standardised_convs_train_by_the_rule_on_the_weight_their_forward_uses():
    def make():
        return nn.Sequential(StdConv2d(2, 3, 3), nn.ReLU(), ScaledStdConv2d(3, 2, 3, stride=2, gain_init=0.7))
    x = torch.randn(2, 2, 6, 6)
    _assert_bp_is_autograd(make, x)
    torch.manual_seed(0)
    plain = make()
    model = nowt.convert(copy.deepcopy(plain), "fa", seed=0)
    rule_keys = {"0.feedback", "0.rule", "2.feedback", "2.rule"}
    assert set(model.state_dict()) == set(plain.state_dict()) | rule_keys
    for p in plain.parameters():
        p.data.add_(0.5)
    model.load_state_dict(plain.state_dict())  # a timm checkpoint loads as it is
    h = torch.randn(2, 3, 6, 6, requires_grad=True)
    g = torch.randn(2, 2, 3, 3)
    model[2](h).backward(g)
    expected = torch.nn.grad.conv2d_input(h.shape, model[2].feedback, g, stride=2, padding=1)
    torch.testing.assert_close(h.grad, expected)  # B, not the standardised W
    assert model[2].gain.grad is not None and model[2].weight.shape == model[2].feedback.shape
    spread = model[2].weight.flatten(1).std(1, unbiased=False) / model[2].gain.flatten()  # standardised
    torch.testing.assert_close(spread, torch.full((2,), 27 ** -0.5), rtol=1e-4, atol=1e-4)


def test_subclasses_that_change_the_op_are_refused_by_name():
    with pytest.raises(ValueError, match=r"test_convert_zoo\.OwnForward at '1': a subclass of "
                                         r"torch\.nn\.modules\.linear\.Linear with its own forward"):
        nowt.convert(nn.Sequential(nn.Linear(2, 2), OwnForward(2, 2)), "fa")
    with pytest.raises(ValueError, match=r"test_convert_zoo\.ExtraState at '0': a subclass of "
                                         r"torch\.nn\.modules\.linear\.Linear holding 'scale'"):
        nowt.convert(nn.Sequential(ExtraState(2, 2), nn.Linear(2, 2)), "fa")
    model = nowt.convert(nn.Sequential(OwnForward(2, 2), nn.Linear(2, 2)), "fa", exclude=["0"])
    assert type(model[0]) is OwnForward


# --- weight norm ----------------------------------------------------------------------------------

def test_parametrized_weight_norm_converts_and_the_rule_applies_to_the_weight_used():
    def make():
        return nn.Sequential(parametrizations.weight_norm(nn.Conv1d(2, 3, 3)), nn.Tanh(), nn.Flatten(),
                             parametrizations.weight_norm(nn.Linear(12, 2)))
    x = torch.randn(2, 2, 6)
    _assert_bp_is_autograd(make, x)
    torch.manual_seed(0)
    plain = make()
    keys = set(plain.state_dict())
    model = nowt.convert(copy.deepcopy(plain), "fa", seed=0)
    assert keys <= set(model.state_dict()) and isinstance(model[3], nowt.Linear)
    assert model[3].feedback.shape == model[3].weight.shape == (2, 12)
    h = torch.randn(2, 12, requires_grad=True)
    g = torch.randn(2, 2)
    model[3](h).backward(g)
    torch.testing.assert_close(h.grad, g @ model[3].feedback)  # B, not the normalised W
    assert model[3].parametrizations.weight.original0.grad is not None


def test_old_style_weight_norm_is_refused_by_name():
    model = nn.Sequential(nn.utils.weight_norm(nn.Linear(3, 3)), nn.Linear(3, 2))
    with pytest.raises(ValueError, match=r"nn\.modules\.linear\.Linear at '0'.*old-style "
                                         r"nn\.utils\.weight_norm.*parametrizations\.weight_norm"):
        nowt.convert(model, "fa")


# --- a converted layer bypassed by the model ------------------------------------------------------

class BeitAttention(nn.Module):
    """timm's BEiT/EVA attention: `F.linear(x, self.qkv.weight, qkv_bias)`, never `self.qkv(x)`."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(4))
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        q, k, v = F.linear(x, self.qkv.weight, torch.cat([self.q_bias, torch.zeros(8)])).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(-2, -1), -1) @ v)


def test_a_converted_layer_whose_weight_is_used_elsewhere_is_caught():
    model = nowt.convert(nn.Sequential(nn.Linear(3, 4), BeitAttention()), "fa", seed=0)
    x = torch.randn(2, 5, 3)
    with pytest.warns(UserWarning, match=r"'1\.qkv' did not run"), pytest.raises(
            ValueError, match=r"'1\.qkv\.weight' \(the weight of converted layer '1\.qkv'\) is used by "
                              r"torch\.nn\.functional\.linear.*exclude=\['1\.qkv'\]"):
        model(x)  # refused at the first forward
    out = model(x)  # and, past that, at the first backward
    assert math.isnan(nowt.weight_angles(model)["1.qkv"]) and not math.isnan(nowt.weight_angles(model)["0"])
    with pytest.raises(RuntimeError, match=r"'1\.qkv' \(nowt\.layers\.Linear\) never ran, but its weight got "
                                           r"a gradient.*exclude=\['1\.qkv'\]"):
        out.sum().backward()
    assert "never ran" in {r.name: r for r in nowt.summary(model, show=False)}["1.qkv"].reads
    quiet = nowt.convert(nn.Sequential(nn.Linear(3, 4), BeitAttention()), "fa", exclude=["1.qkv"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet(x).sum().backward()
        quiet(x).sum().backward()  # the checks are one-shot


def test_the_first_step_checks_leave_the_model_picklable_and_its_steps_unhooked():
    import io
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    model(torch.randn(2, 5, dtype=torch.double)).sum().backward()
    assert not model._forward_hooks and not model[0].weight._backward_hooks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.save(nowt.convert(tiny_mlp(), "fa", seed=0), io.BytesIO())  # before the first step too


# --- pretrained weights, meta device --------------------------------------------------------------

@pytest.mark.parametrize("rule", ["fa", "kp", "wm", "frsf", "brsf", "usf", "dfa"])
def test_a_plain_state_dict_loads_into_a_converted_model_and_keeps_the_feedback(rule):
    torch.manual_seed(0)
    pretrained = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2))
    model = nowt.convert(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 2)), rule,
                         seed=0)
    model(torch.randn(2, 2, 4, 4))  # DFA makes its B here
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(pretrained.state_dict())
    after = model.state_dict()
    for k, v in pretrained.state_dict().items():
        assert torch.equal(after[k], v), k
    for k in set(before) - set(pretrained.state_dict()):
        assert torch.equal(after[k], before[k]), k
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**pretrained.state_dict(), "extra": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"Missing key.*3\.bias"):
        model.load_state_dict({k: v for k, v in pretrained.state_dict().items() if k != "3.bias"})


@pytest.mark.parametrize("rule", ["fa", "kp", "wm", "frsf", "brsf"])
def test_meta_then_to_empty_redraws_the_feedback_convert_drew(rule):
    model = nowt.convert(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.MultiheadAttention(4, 2)), rule, seed=3)
    derived = ("weight", "bias") + (("feedback",) if rule in ("frsf", "brsf") else ())  # B from W's signs
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.endswith(derived)}
    assert any("feedback" in k for k in state)
    model.to("meta").to_empty(device="cpu")
    for k, v in state.items():
        assert torch.equal(model.state_dict()[k], v), k


# --- what the replaced module accepted ------------------------------------------------------------

def test_under_autocast_a_converted_layer_gives_the_replaced_layers_dtype_and_numbers():
    def make():
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                             nn.ConvTranspose2d(3, 3, 2, stride=2), nn.Conv2d(3, 2, 3, padding="same"),
                             nn.Flatten(1, 2), nn.Conv1d(2 * 8, 3, 2), nn.Flatten(), nn.Linear(21, 2))
    torch.manual_seed(0)
    plain = make()
    converted = nowt.convert(copy.deepcopy(plain), "bp")
    x = torch.randn(2, 2, 4, 4)
    for model in (plain, converted):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(x).float().square().sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = plain(x), converted(x)
    assert a.dtype == b.dtype == torch.bfloat16 and torch.equal(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert torch.equal(plain[:4](x), nowt.convert(copy.deepcopy(plain), "fa")[:4](x))
    for (name, p), q in zip(plain.named_parameters(), converted.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_unbatched_conv_inputs_are_accepted(rule):
    for conv, shape in [(nn.Conv1d(2, 3, 3), (2, 7)), (nn.Conv2d(2, 3, 3, padding="same"), (2, 5, 6)),
                        (nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 4, 4)),
                        (nn.Conv3d(2, 3, 2), (2, 3, 3, 3))]:
        x = torch.randn(*shape)
        converted = nowt.convert(copy.deepcopy(conv), rule, seed=0)
        assert torch.equal(converted(x), conv(x))
        converted(x).sum().backward()
        assert converted.weight.grad.shape == conv.weight.shape


def test_a_converted_transformer_encoder_takes_a_padding_mask_in_eval():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    plain = nn.TransformerEncoder(layer, 2).eval()
    model = nowt.convert(copy.deepcopy(plain), "fa", seed=0)
    x, mask = torch.randn(3, 5, 8), torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 3:] = mask[1, 4:] = True
    with torch.no_grad():  # torch's nested-tensor path: zeros at the padded positions, which a mean over
        out, ref = model(x, src_key_padding_mask=mask), plain(x, src_key_padding_mask=mask)  # positions reads
    assert not ref[mask].any()
    torch.testing.assert_close(out, ref)
    float_mask = torch.zeros(3, 5).masked_fill(mask, float("-inf"))
    with torch.no_grad():
        torch.testing.assert_close(model(x, src_key_padding_mask=float_mask),
                                   plain(x, src_key_padding_mask=float_mask))
    out, ref = model(x, src_key_padding_mask=mask), plain(x, src_key_padding_mask=mask)  # with grad: no path
    assert ref[mask].abs().sum() > 0
    torch.testing.assert_close(out, ref)


def test_summary_says_what_each_backward_reads(capsys):
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.MultiheadAttention(4, 2),
                          nn.Linear(4, 2))
    model = nowt.convert(model, "fa", seed=0, exclude=["4"])
    rows = {r.name: r for r in nowt.summary(model)}
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["layer", "type", "rule", "feedback", "backward", "reads"]
    assert rows["2"].rule == "fa" and rows["2"].feedback == "(4, 4)" and rows["2"].reads == "B"
    assert rows["3.in_proj"].feedback == "(12, 4)" and rows["3.out_proj"].reads == "B"
    assert rows["4"].rule == "bp" and rows["4"].reads == "W"
    assert rows["0"].reads == "nothing: a lookup" and rows["1"].rule == "bp (by design)"
    assert "3" not in rows and "nowt.layers.Linear" in printed
