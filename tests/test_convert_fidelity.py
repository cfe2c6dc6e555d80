"""A converted model computes what the original computed, or conversion refuses by name: hooks carried over,
and the layers whose forward conversion could not keep (a forward set on the instance, a __call__ of its
own, a lazy or pruned layer, parametrized attention, spectral norm under a rule that reads W) refused."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations, prune

import nowt


def test_hooks_of_a_converted_layer_keep_acting_and_their_handles_keep_removing_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    pre = model[0].register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    model[0].register_forward_hook(lambda m, args, out: out + 1)
    seen = []
    model[2].register_full_backward_hook(lambda m, grad_in, grad_out: seen.append(grad_out[0].shape))
    x = torch.randn(3, 4)
    expected = model(x)
    converted = nowt.convert(copy.deepcopy(model), "bp")
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=0)
    converted(x).sum().backward()
    assert seen == [torch.Size([3, 2])]
    model = nowt.convert(model, "fa", seed=0)
    pre.remove()  # the handle taken before conversion
    hidden = torch.tanh(F.linear(x, model[0].weight, model[0].bias) + 1)  # no doubling: the pre-hook is gone
    torch.testing.assert_close(model(x), model[2](hidden))


@pytest.mark.parametrize("case", ["instance forward", "own __call__", "lazy", "pruned",
                                  "parametrized attention", "weight set by a hook"])
def test_layers_whose_forward_conversion_would_change_are_refused_by_name(case):
    class Twice(nn.Linear):
        def __call__(self, x):
            return super().__call__(x) * 2

    layer: nn.Module
    if case == "instance forward":
        layer = nn.Linear(4, 4)
        layer.forward = lambda x: F.linear(x, layer.weight * 0.5, layer.bias)
        says = "its forward is replaced on the instance"
    elif case == "own __call__":
        layer, says = Twice(4, 4), "with its own __call__"
    elif case == "lazy":
        layer, says = nn.LazyLinear(4), "lazy module whose parameters are not made yet"
    elif case == "pruned":
        layer = nn.Linear(4, 4)
        prune.l1_unstructured(layer, "weight", amount=0.5)
        says = r"pruned by torch.nn.utils.prune.*prune.remove"
    elif case == "weight set by a hook":  # DropConnect: torch's TypeError, naming no layer, before
        layer = nn.Linear(4, 4)
        layer.weight_raw = nn.Parameter(layer.weight.detach().clone())
        del layer.weight
        layer.register_forward_pre_hook(lambda m, a: setattr(m, "weight", F.dropout(m.weight_raw, 0.1)))
        layer.weight = layer.weight_raw * 1.0
        says = r"'0': its weight is no Parameter of its own \(a tensor set by a hook"
    else:
        layer = nn.MultiheadAttention(4, 2)
        parametrizations.weight_norm(layer, "in_proj_weight")
        says = "MultiheadAttention with a parametrized tensor"
    with pytest.raises(ValueError, match=says):
        nowt.convert(nn.Sequential(layer), "bp")


def test_spectral_norm_is_refused_where_the_rule_reads_the_weight_beyond_the_forward():
    """Each read of a spectral-normed weight in training steps its power iteration: fa's conversion and
    steps read W more often than the forward, so sigma, and the forward, drifted from the original's."""
    torch.manual_seed(0)
    model = nn.Sequential(parametrizations.spectral_norm(nn.Linear(8, 8)), nn.Tanh(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"layer '0' for rule 'fa': its weight is spectral-normed.*exclude"):
        nowt.convert(copy.deepcopy(model), "fa", seed=0)
    x = torch.randn(5, 8)
    for rule, options in (("bp", {}), ("fa", {"exclude": ["0"]})):
        plain, converted = copy.deepcopy(model), nowt.convert(copy.deepcopy(model), rule, seed=0, **options)
        for _ in range(3):  # training mode: every forward steps the power iteration once, in both
            torch.testing.assert_close(converted[0](x), plain[0](x), rtol=0, atol=0)


def test_a_layer_swapped_in_after_conversion_is_refused():
    """A new head put in after `convert` trained by backprop, with only a "did not run" warning for the
    converted one it replaced; put in after the first forward (fine-tuning a trained model), without a
    word."""
    model = nowt.convert(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "fa", seed=0)
    head = model[2]
    with pytest.raises(ValueError, match=r"layer '2' \(torch.nn.modules.linear.Linear\) joined the model "
                                         r"after nowt.convert \(put into a Sequential of it\) and trains by "
                                         r"backprop"):
        model[2] = nn.Linear(4, 3)
    assert model[2] is head  # refused before it took effect
    model(torch.randn(2, 4)).sum().backward()  # the first forward's checks are done and gone
    for put_in in (lambda: model.__setitem__(2, nn.Linear(4, 3)),
                   lambda: setattr(model, "extra", nn.Sequential(nn.Tanh(), nn.Linear(2, 2))),
                   lambda: model[1].add_module("inner", nn.Conv2d(1, 1, 1))):
        with pytest.raises(ValueError, match=r"joined the model after nowt.convert"):
            put_in()
    assert model[2] is head and not hasattr(model, "extra") and not hasattr(model[1], "inner")
    model[2] = nowt.convert(nn.Linear(4, 3), "fa", seed=1)  # as the message says
    model.extra = nn.Sequential(nn.Tanh())  # nothing nowt converts
    model.extra.add_module("1", nowt.convert(nn.Linear(3, 3), "fa", seed=2))
    assert model(torch.randn(2, 4)).shape == (2, 3)
    nn.Sequential(nn.Linear(2, 2))[0] = nn.Linear(2, 2)  # a model nowt never converted: none of its business


def test_a_layer_put_in_behind_torchs_back_is_refused_at_the_first_forward():
    model = nowt.convert(nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)), "fa", seed=0)
    model._modules["2"] = nn.Linear(4, 3)  # no assignment hook sees this
    with pytest.raises(ValueError, match=r"layer '2' \(torch.nn.modules.linear.Linear\) joined the model "
                                         r"after nowt.convert and trains by backprop"):
        model(torch.randn(2, 4))


def test_a_weight_normed_gpt2_conv1d_converts_with_its_forward_and_backprop_gradients():
    """It raised KeyError: 'weight' inside the conversion."""
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = nn.Sequential(Conv1D(6, 4), nn.Tanh(), nn.Linear(6, 2))
    parametrizations.weight_norm(model[0], "weight")
    x = torch.randn(3, 4)
    converted, plain = nowt.convert(copy.deepcopy(model), "bp"), copy.deepcopy(model)
    torch.testing.assert_close(converted(x), plain(x), rtol=0, atol=0)
    converted(x).sum().backward()
    plain(x).sum().backward()
    for a, b in zip(converted.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    assert nowt.convert(copy.deepcopy(model), "fa", seed=0)(x).shape == (3, 2)
