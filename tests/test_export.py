"""`torch.export` of a converted model: the exported graph is the layers' forward alone (an inference graph,
no rule bookkeeping: DFA's pass over the model, brsf's draws), gives the model's outputs, and the model
trains on afterwards. Every per-layer rule in the registry, on each model it converts."""

from __future__ import annotations

import pytest
import torch
from conftest import per_layer_rules, tiny_convnet, tiny_mlp

import nowt


def tiny_vit() -> torch.nn.Module:
    return nowt.models.vit(in_channels=1, num_classes=3, image_size=8, patch=4, dim=8, depth=1, heads=2)


MODELS = {"mlp": (tiny_mlp, (2, 5)), "convnet": (tiny_convnet, (2, 4, 8, 8)), "vit": (tiny_vit, (2, 1, 8, 8))}


def cases() -> list:
    any_model = set(per_layer_rules(any_model=True))
    blocks = pytest.param("dfa", "vit", {"blocks": ["blocks.*"]}, id="dfa-vit-blocks")
    return [pytest.param(r, m, {}, id=f"{r}-{m}") for r in per_layer_rules() for m in MODELS
            if m == "mlp" or r in any_model] + [blocks]


@pytest.mark.parametrize("rule,model,options", cases())
def test_an_exported_converted_model_gives_its_outputs_and_the_model_trains_on(rule, model, options):
    torch.manual_seed(0)
    make, shape = MODELS[model]
    net = nowt.convert(make(), rule, seed=0, **options)
    dtype = next(net.parameters()).dtype
    x = torch.randn(shape, dtype=dtype)
    net(x).sum().backward()  # a training step's forward and backward first
    net.eval()
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x), rtol=0, atol=0)
    net.train()
    net.zero_grad()
    net(x).square().sum().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if n.endswith("weight"))
