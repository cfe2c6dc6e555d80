"""torch.compile captures a converted model's forward in one graph, with no break, under every per-layer rule
that does nothing data-dependent in its forward: a break per layer (as `Tensor._is_view()` in the Linear op
caused, under every rule) splits the compiled step into pieces and costs the fusion compile is used for.
kp's check of its optimizer (tensor versions) must not make dynamo recompile at every step either."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules, tiny_convnet, tiny_mlp
from torch._dynamo.utils import counters

import nowt

#: Rules whose forward breaks the graph on purpose, and why.
BREAKING = {"brsf": "its draw of R runs eagerly (torch.compiler.disable)",
            "dfa": "its pass runs eagerly (`ops.eager_when_compiled`): a break at each converted layer",
            "ifa": "as dfa"}
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


#: (graphs, breaks) of one compiled DFA training step: the model's hooks and each converted layer's forward
#: run eagerly, the rest (activations, flatten, the loss) in graphs between them. Before
#: `ops.eager_when_compiled`, dynamo traced into the pass, broke at its host reads of buffers and fell back
#: to eager frame by frame: 16 graphs for dfa's tiny MLP and ConvNet, 12 for ifa's MLP (and the seeded storage
#: failed under torch.compile with an internal assert of torch's).
DFA_STEP_GRAPHS = {("dfa", "mlp"): (5, 4), ("dfa", "convnet"): (6, 5), ("ifa", "mlp"): (5, 4)}


@pytest.mark.parametrize("rule,model", [pytest.param(r, m, id=f"{r}-{m}") for r, m in DFA_STEP_GRAPHS])
def test_a_compiled_dfa_step_breaks_only_at_the_converted_layers(rule, model):
    torch._dynamo.reset()
    make, shape = MODELS[model]
    net = nowt.convert(make(), rule, seed=0)
    x, y = torch.randn(shape, dtype=torch.float64), torch.randint(0, 2, (shape[0],))

    def step():
        F.cross_entropy(net(x), y).backward()

    step()
    explained = torch._dynamo.explain(step)()
    assert (explained.graph_count, explained.graph_break_count) == DFA_STEP_GRAPHS[rule, model], \
        explained.break_reasons


def _grads(model, x, y) -> list:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("storage", ["dense", "seeded", "shared"])
@pytest.mark.parametrize("model", list(MODELS))
def test_compiled_dfa_has_the_eager_gradients_after_load_state_dict_and_to(model, storage):
    """The pass reads B's seed and shape eagerly at every forward, so a compiled model sees a state loaded
    (another seed: another B) or a dtype moved to after it was compiled, never a value baked in."""
    torch._dynamo.reset()
    make, shape = MODELS[model]
    net = nowt.convert(make(), "dfa", seed=0, storage=storage)
    other = nowt.convert(make(), "dfa", seed=1, storage=storage)
    x, y = torch.randn(shape, dtype=torch.float64), torch.randint(0, 2, (shape[0],))
    other(x)  # its lazily made buffers (B's shape, a dense or shared B) exist to be loaded
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, backend="aot_eager")
    for _ in range(2):
        want = _grads(eager, x, y)
        assert all(torch.equal(a, b) for a, b in zip(_grads(compiled, x, y), want, strict=True))
    net.load_state_dict(other.state_dict())
    want = _grads(other, x, y)
    assert all(torch.equal(a, b) for a, b in zip(_grads(compiled, x, y), want, strict=True))
    net.float(), other.float()
    want = _grads(other, x.float(), y)
    assert all(torch.equal(a, b) for a, b in zip(_grads(compiled, x.float(), y), want, strict=True))
