import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules
from torch import nn

import nowt
from nowt.layers import LocallyConnected2d as RuleLocallyConnected2d
from nowt.rules import rule_class
from nowt.rules.wm import WeightMirror

GEOMETRY = dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=(2, 1), padding=(1, 0),
                input_size=(5, 6))


def make_lc(**kw) -> nowt.LocallyConnected2d:
    return nowt.LocallyConnected2d(**{**GEOMETRY, **kw}).double()


def loop_lc(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layer) -> torch.Tensor:
    """The definition, one output position at a time: a separate filter at every (i, j)."""
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
    oh, ow = layer.output_size
    xp = F.pad(x, (pw, pw, ph, ph))
    w = weight.view(oh, ow, layer.out_channels, -1)
    rows = []
    for i in range(oh):
        cols = []
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].reshape(len(x), -1)
            out = patch @ w[i, j].t()
            cols.append(out if bias is None else out + bias[:, i, j])
        rows.append(torch.stack(cols, -1))
    return torch.stack(rows, -2)


def test_matches_an_explicit_loop_forward_and_gradients():
    lc = make_lc()
    x = torch.randn(4, 2, 5, 6, dtype=torch.double, requires_grad=True)
    out = lc(x)
    assert out.shape == (4, 3, *lc.output_size) == (4, 3, 3, 5)
    weight = lc.weight.detach().clone().requires_grad_(True)
    bias = lc.bias.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    expected = loop_lc(x2, weight, bias, lc)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    out.backward(g)
    expected.backward(g)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(lc.weight.grad, weight.grad)
    torch.testing.assert_close(lc.bias.grad, bias.grad)


def test_op_backward_through_another_matrix_matches_the_loop():
    lc = make_lc()
    x = torch.randn(4, 2, 5, 6, dtype=torch.double)
    b = torch.randn_like(lc.weight)
    g = torch.randn(4, 3, 3, 5, dtype=torch.double)
    out, cols = lc.op.forward_saving(x, lc.weight, lc.bias)  # backward takes the patches forward made
    torch.testing.assert_close(out, lc(x))
    grad_x, grad_w, grad_b = lc.op.backward(g, cols, b, (True, True, True))
    xr = x.clone().requires_grad_(True)
    wr = b.clone().requires_grad_(True)
    loop_lc(xr, wr, None, lc).backward(g)
    torch.testing.assert_close(grad_x, xr.grad)  # the input gradient goes through B, not W
    torch.testing.assert_close(grad_w, wr.grad)  # the weight gradient never reads the matrix
    torch.testing.assert_close(grad_b, g.sum(0))


def test_equals_conv2d_when_every_position_shares_one_filter():
    conv = nn.Conv2d(2, 3, (3, 2), (2, 1), (1, 0)).double()
    lc = make_lc()
    positions = lc.output_size[0] * lc.output_size[1]
    with torch.no_grad():
        lc.weight.copy_(conv.weight.reshape(3, -1).repeat(positions, 1))
        lc.bias.copy_(conv.bias[:, None, None].expand_as(lc.bias))
    x = torch.randn(4, 2, 5, 6, dtype=torch.double)
    torch.testing.assert_close(lc(x), conv(x))


def test_glorot_init_and_bad_arguments():
    lc = nowt.LocallyConnected2d(4, 8, 3, 2, 1, input_size=(10, 10), init="glorot")
    bound = (6 / (4 * 9 + 8 * 9)) ** 0.5
    assert lc.weight.shape == (5 * 5 * 8, 4 * 9) and lc.bias.shape == (8, 5, 5)
    largest = float(lc.weight.detach().abs().max())
    assert 0.9 * bound < largest <= bound
    assert not lc.bias.any()
    with pytest.raises(ValueError, match="expects input"):
        lc(torch.randn(2, 4, 9, 10))
    with pytest.raises(ValueError, match="does not fit"):
        nowt.LocallyConnected2d(1, 1, 5, input_size=(3, 3))
    with pytest.raises(ValueError, match="unknown init"):
        nowt.LocallyConnected2d(1, 1, 1, input_size=3, init="orthogonal")


def lc_net() -> nn.Sequential:
    return nn.Sequential(make_lc(), nn.Tanh(), nn.Flatten(), nn.Linear(45, 2).double())


def test_fa_on_lc_with_feedback_set_to_w_gives_backprop_gradients():
    reference = lc_net()
    converted = nowt.convert(copy.deepcopy(reference), "fa", seed=0)
    assert isinstance(converted[0], RuleLocallyConnected2d)
    assert isinstance(converted[0], nowt.LocallyConnected2d)  # still the plain layer's type
    x, y = torch.randn(4, 2, 5, 6, dtype=torch.double), torch.tensor([0, 1, 1, 0])
    with torch.no_grad():
        for layer in nowt.feedback_layers(converted).values():
            layer.feedback.copy_(layer.weight)  # B := W turns FA into backprop
    first = converted[0].weight
    x_in = x.clone().requires_grad_(True)
    F.cross_entropy(converted(x_in), y).backward()
    x_ref = x.clone().requires_grad_(True)
    F.cross_entropy(reference(x_ref), y).backward()
    torch.testing.assert_close(first.grad, reference[0].weight.grad)
    torch.testing.assert_close(x_in.grad, x_ref.grad)


def test_fa_on_lc_sends_the_error_through_b():
    net = nowt.convert(lc_net(), "fa", seed=0)
    lc = net[0]
    assert not torch.equal(lc.feedback, lc.weight)
    x = torch.randn(4, 2, 5, 6, dtype=torch.double, requires_grad=True)
    out = lc(x)
    g = torch.randn_like(out)
    out.backward(g)
    xr = x.detach().clone().requires_grad_(True)
    loop_lc(xr, lc.feedback, None, lc).backward(g)  # hand: the error reaches the input through B
    torch.testing.assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("rule", per_layer_rules(any_model=True))
def test_every_per_layer_rule_converts_and_trains_lc(rule):
    net = nowt.convert(lc_net(), rule, seed=0)
    assert isinstance(net[0], RuleLocallyConnected2d) and net[0].rule == rule
    x = torch.randn(4, 2, 5, 6, dtype=torch.double)
    F.cross_entropy(net(x), torch.tensor([0, 1, 1, 0])).backward()
    assert net[0].weight.grad is not None and torch.isfinite(net[0].weight.grad).all()
    assert net[0].weight.grad.abs().sum() > 0
    if issubclass(rule_class(rule), WeightMirror):  # a mirror rule mirrors LC layers too
        before = net[0].feedback.clone()
        assert nowt.mirror(net, 2) == 2
        assert not torch.equal(before, net[0].feedback)


def test_backprop_path_under_bf16_autocast_gives_bf16_and_with_only_the_input_tracked():
    lc = nowt.LocallyConnected2d(**GEOMETRY)
    x = torch.randn(4, 2, 5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lc(x)
    assert out.dtype == torch.bfloat16
    g = torch.randn(out.shape)
    out.float().backward(g)
    weight = lc.weight.detach().double().requires_grad_(True)
    loop_lc(x.double(), weight, lc.bias.detach().double(), lc).backward(g.double())
    assert lc.weight.grad.dtype == torch.float32
    torch.testing.assert_close(lc.weight.grad.double(), weight.grad, rtol=0.05, atol=0.05)

    lc.requires_grad_(False)
    x_in = x.double().requires_grad_(True)
    lc.double()(x_in).backward(g.double())
    x_ref = x.double().requires_grad_(True)
    loop_lc(x_ref, lc.weight, lc.bias, lc).backward(g.double())
    torch.testing.assert_close(x_in.grad, x_ref.grad)


def test_rule_trained_layer_saves_the_patches_its_forward_made_not_the_input():
    layer = nowt.convert(torch.nn.Sequential(make_lc()), "fa", seed=0)[0]
    x = torch.randn(4, 2, 5, 6, dtype=torch.double)
    saved = layer(x).grad_fn.saved_tensors  # (patches, B): the weight gradient does not unfold x again
    positions = layer.output_size[0] * layer.output_size[1]
    assert saved[0].shape == (positions, 4, 2 * 3 * 2) and saved[1] is layer.feedback


def test_output_is_contiguous_so_the_ops_after_it_run_at_full_speed():
    x = torch.randn(4, 2, 5, 6, dtype=torch.double)
    assert make_lc()(x).is_contiguous()
    assert nowt.convert(torch.nn.Sequential(make_lc()), "fa", seed=0)(x).is_contiguous()
