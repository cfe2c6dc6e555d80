"""N-d and transposed convolutions (`ConvOp`): hand-computed gradients, backprop mode equal to autograd,
feedback drawn with the weight's own fan-in, every rule converting and training a step."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules
from torch import nn

import nowt
from nowt.ops import ConvOp, FeedbackFunction

RULES = per_layer_rules(any_model=True)  # every rule that converts any model, read from the registry

#: (torch layer, input shape, functional form taking (x, weight)) for each new op.
CASES = {
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2), (2, 4, 9),
               lambda m: lambda x, w: F.conv1d(x, w, None, m.stride, m.padding, m.dilation, m.groups)),
    "conv3d": (lambda: nn.Conv3d(2, 3, (2, 3, 1), stride=(1, 2, 1), padding=(0, 1, 0)), (2, 2, 3, 5, 2),
               lambda m: lambda x, w: F.conv3d(x, w, None, m.stride, m.padding, m.dilation, m.groups)),
    "convT1d": (lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
                (2, 4, 5), lambda m: lambda x, w: F.conv_transpose1d(
                    x, w, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)),
    "convT2d": (lambda: nn.ConvTranspose2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), output_padding=(1, 0),
                                           dilation=(1, 2)), (2, 3, 4, 3),
                lambda m: lambda x, w: F.conv_transpose2d(
                    x, w, None, m.stride, m.padding, m.output_padding, m.groups, m.dilation)),
    "convT3d": (lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), (1, 2, 2, 2, 3),
                lambda m: lambda x, w: F.conv_transpose3d(x, w, None, m.stride, m.padding, m.output_padding,
                                                          m.groups, m.dilation)),
}


def test_transposed_conv_gradients_by_hand():
    """y = x * W (1 channel, k=2): y0 = x0 w0, y1 = x0 w1 + x1 w0, y2 = x1 w1; grad_x goes through B."""
    x, w, b = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[3.0, 5.0]]]), torch.tensor([[[7.0, 11.0]]])
    g = torch.tensor([[[1.0, 10.0, 100.0]]])
    op = ConvOp((1,), (0,), (1,), 1, transposed=True, output_padding=(0,))
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = FeedbackFunction.apply(xr, wr, None, b, op)
    assert y.tolist() == [[[3.0, 5.0 + 6.0, 10.0]]]
    y.backward(g)
    assert xr.grad.tolist() == [[[1 * 7 + 10 * 11, 10 * 7 + 100 * 11]]]
    assert wr.grad.tolist() == [[[1 * 1 + 2 * 10, 1 * 10 + 2 * 100]]]


@pytest.mark.parametrize("case", list(CASES))
def test_input_and_weight_gradients_are_autograd_with_w_replaced_by_b(case):
    make, shape, functional = CASES[case]
    m = make().double()
    fn = functional(m)
    x = torch.randn(shape, dtype=torch.double)
    b = torch.randn_like(m.weight)
    layer = nowt.convert(m, "fa", seed=0)
    layer.feedback.copy_(b)
    xr = x.clone().requires_grad_()
    y = layer(xr)
    g = torch.randn_like(y)
    y.backward(g)
    # Reference: the input gradient of the same op with B as its weight; the weight gradient of the op at W.
    xb = x.clone().requires_grad_()
    fn(xb, b).backward(g)
    wr = m.weight.detach().clone().requires_grad_()
    fn(x, wr).backward(g)
    torch.testing.assert_close(xr.grad, xb.grad)
    torch.testing.assert_close(layer.weight.grad, wr.grad)
    torch.testing.assert_close(layer.bias.grad, g.sum([0, *range(2, g.dim())]))


@pytest.mark.parametrize("case", list(CASES))
def test_backprop_mode_is_plain_autograd_exactly(case):
    make, shape, _ = CASES[case]
    torch.manual_seed(0)
    ref = make().double()
    conv = nowt.convert(make().double(), "bp")
    conv.load_state_dict(ref.state_dict())
    x = torch.randn(shape, dtype=torch.double)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ya, yb = ref(xs[0]), conv(xs[1])
    assert torch.equal(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(xs[0].grad, xs[1].grad) and torch.equal(ref.weight.grad, conv.weight.grad)
    assert torch.equal(ref.bias.grad, conv.bias.grad)


@pytest.mark.parametrize("case", ["conv1d", "convT1d", "convT2d"])
def test_feedback_drawn_as_torch_draws_the_weight(case):
    """B ~ U(+-1/sqrt(fan_in)) with torch's fan-in of the weight: in/groups * k for a convolution,
    out/groups * k for a transposed one (its weight is (in, out/groups, k...)), so B has W's scale."""
    m = CASES[case][0]()
    fan_in = m.weight.shape[1] * math.prod(m.kernel_size)
    layer = nowt.convert(m, "fa", seed=0)
    assert layer.feedback.abs().max() <= 1 / math.sqrt(fan_in)
    assert layer.feedback.abs().max() > 0.8 / math.sqrt(fan_in)
    assert layer.feedback.shape == layer.weight.shape


def test_weight_mirror_learns_a_transposed_conv():
    torch.manual_seed(0)
    layer = nowt.convert(nn.ConvTranspose2d(3, 4, 3, stride=2, groups=1), "wm", seed=0)
    layer(torch.randn(16, 3, 5, 5))
    before = nowt.weight_angles(layer)[""]
    nowt.mirror(layer, 200)
    after = nowt.weight_angles(layer)[""]
    assert before > 70 and after < 20


def test_mirror_step_counts_the_fan_in_of_a_transposed_conv():
    """ConvTranspose1d(16, 2, k=4, stride=2) on length 4 has 10 outputs: 0, 1, 8, 9 sum one tap, 2..7 two,
    so an output sums 16 * 16 / 10 = 25.6 inputs on average (not w[0].numel() = 2 * 4 = 8: the weight is
    (in, out, k)). Each tap pairs with the 4 inputs of one example, so the automatic step is
    0.1 * 4 / 25.6 = 1/64 (it would be 0.05 with the weight's shape)."""
    layer = nowt.convert(nn.ConvTranspose1d(16, 2, 4, stride=2), "wm", seed=0)
    layer(torch.randn(1, 16, 4))
    start = layer.feedback.clone()
    ends = []
    for lr in (None, 1 / 64, 0.05):
        layer.feedback.copy_(start)
        nowt.mirror(layer, 1, lr=lr, generator=torch.Generator().manual_seed(0))
        ends.append(layer.feedback.clone())
    torch.testing.assert_close(ends[0], ends[1])
    assert (ends[0] - ends[2]).abs().max() > 0.01


def _conv_transpose_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(8, 16, 4, stride=2, padding=1), nn.ReLU(),
                         nn.ConvTranspose2d(16, 2, 3), nn.Flatten(), nn.Linear(2 * 10 * 10, 10))


MIRROR_NETS = {"conv1d": (nowt.models.conv1d, (32, 1, 28, 28)), "conv_transpose": (_conv_transpose_net,
                                                                                   (32, 1, 8, 8)),
               "vit": (nowt.models.vit, (32, 1, 28, 28))}


@pytest.mark.parametrize("name", list(MIRROR_NETS))
def test_weight_mirror_schedule_aligns_every_new_layer(name):
    """The warm-up and training mirror steps, run by the rule's hooks as `nowt train` runs them, bring B
    from ~90 degrees to within a quarter of that on every layer: 1-d, transposed, attention projections."""
    make, shape = MIRROR_NETS[name]
    model = nowt.convert(make(), "wm", seed=0, mirror_warmup=80, mirror_warmup_batch=64)
    model(torch.randn(shape))
    before = nowt.weight_angles(model)
    (rule,) = nowt.feedback_rules(model)
    rule.begin_training(model, shape[0])
    for step in range(1, 21):
        rule.after_step(model, step)
    after = nowt.weight_angles(model)
    assert min(before.values()) > 80
    assert all(after[k] < 0.25 * before[k] for k in before), after
    kinds = {type(m).__name__ for m in nowt.feedback_layers(model).values()}
    assert {"conv1d": {"Conv1d"}, "conv_transpose": {"ConvTranspose2d"},
            "vit": {"Projection", "Linear"}}[name] <= kinds
    if name == "vit":
        assert {f"blocks.{i}.self_attn.{p}" for i in (0, 1) for p in ("in_proj", "out_proj")} <= set(after)


def test_conv_transpose_output_size_and_conv1d_same_padding():
    torch.manual_seed(0)
    ref = nn.ConvTranspose2d(2, 3, 3, stride=2)
    conv = nowt.convert(nn.ConvTranspose2d(2, 3, 3, stride=2), "fa", seed=0)
    conv.load_state_dict({**conv.state_dict(), **ref.state_dict()})
    x = torch.randn(1, 2, 4, 4)
    assert torch.equal(ref(x, output_size=[10, 10]), conv(x, output_size=[10, 10]))
    assert conv(x).shape[-1] == 9  # the output padding was for that call only
    same = nn.Conv1d(2, 3, 4, padding="same", padding_mode="reflect")
    assert torch.equal(same(x[:, :, 0]), nowt.convert(same, "fa")(x[:, :, 0]))


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(3, 4, 3, padding="same", padding_mode="circular"), nn.ReLU(),
        nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, groups=2), nn.Unflatten(2, (1, 1, 22)),
        nn.Conv3d(2, 2, (1, 1, 3)), nn.ConvTranspose3d(2, 2, (1, 1, 3)), nn.Flatten(), nn.Linear(44, 5))


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_converts_and_trains_new_convolutions(rule):
    torch.manual_seed(0)
    ref = _net()
    model = nowt.convert(_net(), rule, seed=0)
    model.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(4, 3, 10)
    assert torch.equal(model(x), ref(x))
    assert [type(m).__name__ for m in nowt.feedback_layers(model).values()] == [
        "Conv1d", "ConvTranspose1d", "Conv3d", "ConvTranspose3d", "Linear"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=False))
    if rule == "dfa":  # B (n_out, *input[1:]) per layer, whatever the op
        assert model[2].feedback.shape == (5, 4, 10) and model[5].feedback.shape == (5, 2, 1, 1, 20)
