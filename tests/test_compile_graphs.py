"""torch.compile captures a converted model's forward in one graph, with no break, under every per-layer rule
that does nothing data-dependent in its forward: a break per layer (as `Tensor._is_view()` in the Linear op
caused, under every rule) splits the compiled step into pieces and costs the fusion compile is used for.
kp's check of its optimizer (tensor versions) must not make dynamo recompile at every step either."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules, tiny_convnet, tiny_mlp
from torch._dynamo.utils import counters

import nowt

#: Rules whose forward breaks the graph on purpose, and why.
BREAKING = {"brsf": "its draw of R runs eagerly (torch.compiler.disable)",
            "dfa": "the pass reads host values of its buffers", "ifa": "as dfa"}
MODELS = {"mlp": (tiny_mlp, (4, 5)), "convnet": (tiny_convnet, (4, 4, 8, 8))}


def cases() -> list:
    any_model = set(per_layer_rules(any_model=True))
    return [pytest.param(r, m, id=f"{r}-{m}") for r in per_layer_rules() if r not in BREAKING for m in MODELS
            if m == "mlp" or r in any_model]


@pytest.mark.parametrize("rule,model", cases())
def test_the_compiled_forward_is_one_graph(rule, model):
    torch._dynamo.reset()
    make, shape = MODELS[model]
    net = nowt.convert(make(), rule, seed=0)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    net(x)  # the first forward's checks run eagerly
    explained = torch._dynamo.explain(net)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons


def test_compiled_kp_steps_do_not_recompile():
    torch._dynamo.reset()
    counters.clear()
    net = nowt.convert(tiny_mlp(), "kp", seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    x, y = torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 2, (8,))
    net(x)
    compiled = torch.compile(net, backend="eager")
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(compiled(x), y).backward()
        opt.step()
    assert counters["stats"]["unique_graphs"] == 1
