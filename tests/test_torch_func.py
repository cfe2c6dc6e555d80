"""`torch.func` transforms on converted models: `grad` gives the rule's own update (the gradients
`loss.backward()` gives, which the other tests check against hand computations) and `vmap(grad)` its
per-example updates; rules that cannot run under a transform refuse by name; a second derivative through a
rule-trained layer raises, under torch.func as under create_graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules, tiny_convnet, tiny_mlp
from torch.func import functional_call, grad, vmap

import nowt

#: Rules that refuse to run inside a transform, and the word of why their message gives.
REFUSED = {"brsf": "draws new magnitudes", "dfa": "hooks", "ifa": "hooks"}
MODELS = {"mlp": (tiny_mlp, (6, 5)), "convnet": (tiny_convnet, (6, 4, 8, 8))}


def cases() -> list:
    any_model = set(per_layer_rules(any_model=True))
    return [pytest.param(r, m, id=f"{r}-{m}") for r in per_layer_rules() for m in MODELS
            if m == "mlp" or r in any_model]


def _converted(rule: str, model: str):
    torch.manual_seed(0)
    make, shape = MODELS[model]
    net = nowt.convert(make(), rule, seed=0)
    x, y = torch.randn(shape, dtype=torch.float64), torch.randint(0, 2, (shape[0],))
    net(x)  # the first forward's checks run outside the transform
    return net, x, y


@pytest.mark.parametrize("rule,model", cases())
def test_grad_and_per_example_grads_are_the_rules_updates(rule, model):
    net, x, y = _converted(rule, model)
    params = {k: p.detach() for k, p in net.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)

    if rule in REFUSED:
        with pytest.raises(RuntimeError, match=rf"^{rule}: .*{REFUSED[rule]}.*torch\.func transforms"):
            grad(loss)(params, x, y)
        return
    grads = grad(loss)(params, x, y)
    net.zero_grad()
    loss(dict(net.named_parameters()), x, y).backward()
    trained = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    assert trained.keys() == {k for k, g in grads.items() if g.abs().sum() > 0}
    for k, g in trained.items():
        torch.testing.assert_close(grads[k], g, rtol=1e-12, atol=1e-12)
    one = grad(lambda p, xb, yb: loss(p, xb[None], yb[None]))
    per_example = vmap(one, in_dims=(None, 0, 0))(params, x, y)
    for k, g in trained.items():
        assert per_example[k].shape == (x.shape[0], *g.shape)
        torch.testing.assert_close(per_example[k].mean(0), g, rtol=1e-10, atol=1e-12)
    first = grad(loss)(params, x[:1], y[:1])  # one example's update, on its own
    for k in trained:
        torch.testing.assert_close(per_example[k][0], first[k], rtol=1e-10, atol=1e-12)


def test_a_second_derivative_through_a_rule_trained_layer_raises_under_torch_func():
    net, x, y = _converted("fa", "mlp")
    w = net[0].weight.detach()

    def loss(v):
        return F.cross_entropy(functional_call(net, {"0.weight": v}, (x,)), y)

    assert grad(loss)(w).shape == w.shape
    with pytest.raises(RuntimeError, match="a second derivative through a rule-trained layer"):
        grad(lambda v: grad(loss)(v).square().sum())(w)
