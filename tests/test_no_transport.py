"""No weight transport on many layer types: the backward pass of every rule that declares it reads no forward
weight (`transports_weights` False: fa, kp, wm, dfa, ifa, ...) never reads one.

Downstream weights are changed in place between forward and backward (through `.data`, which autograd's
version counter does not see); upstream updates must not move. Under backprop they do. (That a rule
declaring it reads them does: `test_rule_contract.py`.)
"""

import pytest
import torch
from conftest import per_layer_rules, tiny_convnet, tiny_mlp
from torch import nn

import nowt


def _first_layer_grads(make, rule, x, tamper: bool):
    torch.manual_seed(0)
    model = nowt.convert(make(), rule, seed=0)
    out = model(x)
    if tamper:
        layers = list(nowt.feedback_layers(model).values())
        for layer in layers[1:]:
            layer.weight.data.mul_(-3.0).add_(1.0)
    out.square().sum().backward()
    first = next(iter(nowt.feedback_layers(model).values()))
    return first.weight.grad.clone(), first.bias.grad.clone()


def conv1d_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv1d(3, 2, 2, stride=2), nn.Flatten(),
                         nn.Linear(2 * 4, 2)).double()


def conv_transpose_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(),
                         nn.ConvTranspose2d(3, 2, 3, stride=2, output_padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(2 * 8 * 8, 2)).double()


class TinyTransformer(nn.Module):
    """Embedding Linear (the upstream layer), one encoder layer, a readout."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(1))


def gpt2_conv1d_net() -> nn.Sequential:
    """transformers' Conv1D (GPT-2's projections, W stored (in, out)); skipped without transformers."""
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    return nn.Sequential(conv1d(6, 3), nn.Tanh(), conv1d(2, 6)).double()


NETS = [(tiny_mlp, (4, 5)), (gpt2_conv1d_net, (4, 3)), (tiny_convnet, (2, 4, 8, 8)), (conv1d_net, (2, 2, 8)),
        (conv_transpose_net, (2, 2, 5, 5)), (lambda: TinyTransformer().double(), (2, 4, 3))]


#: Every rule in the registry that declares it reads no forward weight, on every net it converts.
NO_TRANSPORT = [r for r in per_layer_rules() if not nowt.make_rule(r).transports_weights]
CASES = [(make, shape, rule) for make, shape in NETS for rule in NO_TRANSPORT
         if make is tiny_mlp or rule in per_layer_rules(any_model=True)]


def _tampering_changes(make, shape, rule) -> bool:
    x = torch.randn(*shape, dtype=torch.double)
    clean = _first_layer_grads(make, rule, x, tamper=False)
    tampered = _first_layer_grads(make, rule, x, tamper=True)
    return not all(torch.equal(a, b) for a, b in zip(clean, tampered, strict=True))


@pytest.mark.parametrize("make,shape,rule", CASES)
def test_upstream_updates_do_not_depend_on_downstream_weights(make, shape, rule):
    assert not _tampering_changes(make, shape, rule)


@pytest.mark.parametrize("make,shape", NETS)
def test_the_tampering_reaches_backprop(make, shape):
    assert _tampering_changes(make, shape, "bp"), "the tampering must reach backprop's gradients, or the " \
        "tests above prove nothing"
