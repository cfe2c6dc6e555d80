import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()


def tiny_convnet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), nn.Tanh(),
        nn.Conv2d(6, 3, 2, dilation=2, bias=False), nn.Flatten(), nn.Linear(3 * 2 * 2, 2),
    ).double()


def teacher_task(n=600, d=20, classes=3, seed=0):
    """A random linear teacher's labels on Gaussian inputs: (train, test) tensors, 500 examples to train."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    teacher = torch.randn(d, classes, generator=g)
    y = (x @ teacher).argmax(1)
    return (x[:500], y[:500]), (x[500:], y[500:])


def half_square_error(model, x, t):
    """Backpropagates 0.5 * |model(x) - t|^2 and returns its output error e = model(x) - t."""
    y = model(x)
    (0.5 * (y - t).square().sum()).backward()
    return (y - t).detach()


def mirror_calls(monkeypatch) -> list:
    """Records (steps, batch_size) of every weight-mirror call, which still runs."""
    from nowt.rules import wm

    calls = []
    real = wm.mirror_layers

    def counting(layers, steps=1, **kwargs):
        calls.append((steps, kwargs.get("batch_size")))
        return real(layers, steps, **kwargs)

    monkeypatch.setattr(wm, "mirror_layers", counting)
    return calls


def is_per_layer(name: str) -> bool:
    """Whether the registered rule `name` trains layer by layer (through `nowt.convert`), not the whole
    network through a learner of its own (target propagation)."""
    from nowt.rules import WholeNetworkRule, rule_class

    return not issubclass(rule_class(name), WholeNetworkRule)


def per_layer_rules(*, any_model: bool = False) -> list[str]:
    """Every per-layer rule in the registry, in its order, read when called (at collection: a rule added to
    the registry is tested with no edit here). `any_model`: only those that convert any model, not those
    whose class declares `mlp_only` (ifa takes `nn.Sequential` MLPs only)."""
    from nowt.rules import list_rules, rule_class

    return [r for r in list_rules() if is_per_layer(r)
            and not (any_model and getattr(rule_class(r), "mlp_only", False))]
