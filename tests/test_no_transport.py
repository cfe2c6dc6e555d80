"""No weight transport: the backward pass of fa, kp and wm never reads a forward weight.

Downstream weights are changed in place between forward and backward (through `.data`, which autograd's
version counter does not see); upstream updates must not move. Under backprop they do.
"""

import pytest
import torch
from conftest import tiny_convnet, tiny_mlp
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


@pytest.mark.parametrize("make,shape", NETS)
@pytest.mark.parametrize("rule", ["fa", "kp", "wm", "dfa", "bp"])
def test_upstream_updates_do_not_depend_on_downstream_weights(make, shape, rule):
    x = torch.randn(*shape, dtype=torch.double)
    clean = _first_layer_grads(make, rule, x, tamper=False)
    tampered = _first_layer_grads(make, rule, x, tamper=True)
    same = all(torch.equal(a, b) for a, b in zip(clean, tampered, strict=True))
    if rule == "bp":
        assert not same, "the tampering must reach backprop's gradients, or this test proves nothing"
    else:
        assert same


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "brsf", "frsf", "kp", "wm"])
def test_transports_weights_flag_is_honest(rule):
    assert nowt.make_rule(rule).transports_weights == (rule in ("bp", "usf", "brsf", "frsf"))
