"""The networks of Bartunov et al. (2018) and the learned inverses that target propagation trains for them.

A network is an `nn.Sequential` of *blocks*, one per layer l of the paper: block l maps h_{l-1} to
h_l = tanh(W_l h_{l-1} + b_l) (the last block gives the logits, no tanh). Each block holds exactly one
weight layer (`nn.Linear` or `nowt.LocallyConnected2d`), so the same network is also trained by backprop
or, after `nowt.convert`, by any per-layer rule. `network.input_shape` records the input it expects.

Padding is k // 2 (TensorFlow's "SAME" for these odd kernels: out = ceil(in / stride)); the paper does
not give it. The paper's "BP convnet" rows train the same architectures with weight sharing: `mnist_conv`,
`cifar_conv` and `imagenet_conv` are the LC networks with `nn.Conv2d` in place of each locally connected
layer (same kernels, channels, strides and padding; Glorot init).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from nowt.lc import LocallyConnected2d
from nowt.models import register_model

ConvSpec = tuple[int, int, int]  # (kernel size, out channels, stride)


def _glorot_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _glorot_conv(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Conv2d:
    layer = nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2)
    nn.init.xavier_uniform_(layer.weight)
    assert layer.bias is not None  # made with one
    nn.init.zeros_(layer.bias)
    return layer


def build_network(
    input_shape: Sequence[int], lc: Sequence[ConvSpec] = (), fc: Sequence[int] = (), num_classes: int = 10,
    shared: bool = False,
) -> nn.Sequential:
    """Locally connected tanh blocks `lc`, then fully connected tanh blocks `fc`, then a linear readout.

    Glorot init throughout. `input_shape` = (C, H, W) (or (features,) when `lc` is empty). `shared=True`
    makes the `lc` blocks convolutions (the paper's "BP convnet").
    """
    shape = tuple(input_shape)
    if lc and len(shape) != 3:
        raise ValueError(f"locally connected layers need a (C, H, W) input shape, got {shape}")
    blocks: list[nn.Module] = []
    for kernel, channels, stride in lc:
        layer: nn.Module
        if shared:
            layer = _glorot_conv(shape[0], channels, kernel, stride)
        else:
            layer = LocallyConnected2d(shape[0], channels, kernel, stride, kernel // 2,
                                       input_size=(shape[1], shape[2]), init="glorot")
        blocks.append(nn.Sequential(layer, nn.Tanh()))
        shape = (channels, *(-(-size // stride) for size in shape[1:]))  # ceil(in / stride)
    width = math.prod(shape)
    for features in fc:
        blocks.append(nn.Sequential(nn.Flatten(), _glorot_linear(width, features), nn.Tanh()))
        width = features
    blocks.append(nn.Sequential(nn.Flatten(), _glorot_linear(width, num_classes)))
    network = nn.Sequential(*blocks)
    # torch types Module.__setattr__'s value as Tensor | Module, though any value is stored
    network.input_shape = tuple(input_shape)  # type: ignore[assignment]
    return network


#: Bartunov et al.'s networks by name (`create_network`).
NETWORKS: dict[str, Callable[..., nn.Sequential]] = {}


def network(fn: Callable[..., nn.Sequential]) -> Callable[..., nn.Sequential]:
    """Decorator: a Bartunov et al. network, in `NETWORKS` and in the one model registry
    (`nowt.models.create_model`, `nowt train --model mnist_lc`), built with tanh."""
    NETWORKS[fn.__name__] = fn
    return register_model(activation="tanh")(fn)


@network
def mnist_fc(num_classes: int = 10) -> nn.Sequential:
    return build_network((1, 28, 28), fc=(256,) * 5, num_classes=num_classes)


MNIST_LC: tuple[ConvSpec, ...] = ((3, 32, 2), (3, 64, 2))
CIFAR_LC: tuple[ConvSpec, ...] = ((5, 64, 2), (5, 128, 2), (3, 256, 1))
IMAGENET_LC: tuple[ConvSpec, ...] = ((9, 48, 4), (3, 48, 2), (5, 96, 1), (3, 96, 2), (3, 192, 1), (3, 192, 2),
                                     (3, 384, 1))


@network
def mnist_lc(num_classes: int = 10) -> nn.Sequential:
    return build_network((1, 28, 28), lc=MNIST_LC, fc=(1024,), num_classes=num_classes)


@network
def mnist_conv(num_classes: int = 10) -> nn.Sequential:
    return build_network((1, 28, 28), lc=MNIST_LC, fc=(1024,), num_classes=num_classes, shared=True)


@network
def cifar_fc(num_classes: int = 10) -> nn.Sequential:
    return build_network((3, 32, 32), fc=(1024,) * 3, num_classes=num_classes)


@network
def cifar_lc(num_classes: int = 10) -> nn.Sequential:
    return build_network((3, 32, 32), lc=CIFAR_LC, fc=(1024,), num_classes=num_classes)


@network
def cifar_conv(num_classes: int = 10) -> nn.Sequential:
    return build_network((3, 32, 32), lc=CIFAR_LC, fc=(1024,), num_classes=num_classes, shared=True)


@network
def imagenet_lc(num_classes: int = 1000, image_size: int = 224) -> nn.Sequential:
    """The paper's seven locally connected layers and a softmax readout (about 260M weights at 224)."""
    return build_network((3, image_size, image_size), lc=IMAGENET_LC, num_classes=num_classes)


@network
def imagenet_conv(num_classes: int = 1000, image_size: int = 224) -> nn.Sequential:
    """`imagenet_lc` with shared (convolutional) weights: the paper's ImageNet "BP convnet"."""
    return build_network((3, image_size, image_size), lc=IMAGENET_LC, num_classes=num_classes, shared=True)


def create_network(name: str, **kwargs) -> nn.Sequential:
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known networks: {', '.join(NETWORKS)}")
    return NETWORKS[name](**kwargs)


def weight_layer(block: nn.Module) -> nn.Linear | LocallyConnected2d:
    """The one weight layer of a block (Linear or LocallyConnected2d, converted or not)."""
    found = [m for m in block.modules() if isinstance(m, nn.Linear | LocallyConnected2d)]
    if len(found) != 1:
        raise ValueError(f"a target-propagation block needs exactly one Linear or LocallyConnected2d layer, "
                         f"found {len(found)} in {block}")
    return found[0]


class InverseLocallyConnected2d(nn.Module):
    """Maps an LC layer's output (O, out_h, out_w) back to its input shape (C, H, W) through the same
    receptive fields, with its own untied weights V (the forward weight's shape) and a bias per input unit."""

    def __init__(self, layer: LocallyConnected2d) -> None:
        super().__init__()
        self.op = layer.op
        self.weight = nn.Parameter(torch.empty_like(layer.weight))
        self.bias = nn.Parameter(torch.zeros(layer.in_channels, *layer.input_size, device=layer.weight.device,
                                             dtype=layer.weight.dtype))
        # Glorot with the roles of fan-in and fan-out swapped, which is the same bound.
        fan = layer.weight.shape[1] + layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
        bound = math.sqrt(6.0 / fan)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, h: Tensor) -> Tensor:
        return self.op.input_grad(h, self.weight) + self.bias


def make_inverse(block: nn.Module, in_shape: Sequence[int], out_features: int | None = None) -> nn.Module:
    """g_l: tanh(V_l h_l + c_l) shaped like the block's input `in_shape` (per example).

    LC blocks get an LC inverse; every other block a Linear one from its flattened output (of
    `out_features` units, needed for the readout, whose inverse sees the label distribution and any
    auxiliary features) onto the flattened input.
    """
    layer = weight_layer(block)
    if isinstance(layer, LocallyConnected2d) and out_features is None:
        return nn.Sequential(InverseLocallyConnected2d(layer), nn.Tanh())
    if out_features is None:
        assert isinstance(layer, nn.Linear)  # a locally connected one returned above
        out_features = layer.out_features
    linear = _glorot_linear(out_features, math.prod(in_shape)).to(layer.weight.device, layer.weight.dtype)
    return nn.Sequential(nn.Flatten(), linear, nn.Tanh(), nn.Unflatten(1, tuple(in_shape)))


class AuxiliaryFeatures(nn.Module):
    """AO-SDTP's z = tanh(R h_{L-1}): fixed random features of the penultimate layer, never trained."""

    weight: Tensor  # R, a buffer

    def __init__(self, in_features: int, size: int, device=None, dtype=None) -> None:
        super().__init__()
        weight = torch.empty(size, in_features, device=device, dtype=dtype)
        self.register_buffer("weight", nn.init.xavier_uniform_(weight))

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(h.flatten(1) @ self.weight.t())

