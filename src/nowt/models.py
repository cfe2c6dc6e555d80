"""Plain `nn.Module` models, registered by name (`create_model("mlp", ...)`), ready for `nowt.convert`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: The one model registry, name -> factory (timm-style): nowt's own models, torchvision's resnets and the
#: target-propagation networks of Bartunov et al. (registered by `nowt.targetprop.networks`).
MODELS: dict[str, Callable[..., nn.Module]] = {}
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
#: model name -> the activation it is built with, for models without an `activation` argument whose
#: activation a config may state (the Bartunov et al. networks are tanh); others refuse `--activation`
FIXED_ACTIVATION: dict[str, str] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, activation: str | None = None) -> Any:
    """Decorator: registers `fn` under its `__name__`; a second, different factory of one name is refused
    so that one package cannot silently replace another's model. `@register_model(activation="tanh")`
    also records the activation a model without an `activation` argument is built with."""
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = fn.__name__
        if MODELS.get(name, fn) is not fn:
            raise ValueError(f"model {name!r} is already registered")
        MODELS[name] = fn
        if activation is not None:
            FIXED_ACTIVATION[name] = activation
        return fn

    return add if fn is None else add(fn)


def models() -> list[str]:
    """The names of every registered model."""
    return list(MODELS)


#: the factories' keyword arguments that are sizes: create_model refuses one < 1 for every model by name
SIZES = ("in_features", "in_channels", "num_classes", "width", "image_size", "patch", "dim", "depth", "heads",
         "mlp_ratio", "vocab_size")


def create_model(name: str, **kwargs) -> nn.Module:
    """The model `name` built with `kwargs` (its factory's keyword arguments)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    _check_sizes(name, **{k: v for k, v in kwargs.items() if k in SIZES})
    return MODELS[name](**kwargs)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_sizes(model: str, **sizes: Any) -> None:
    """Refuses a size that would build a layer of no width (or a negative one, which torch refuses later)."""
    for name, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{model}: {name} must be an integer >= 1, got {value!r}")


@register_model
def mlp(
    in_features: int = 784,
    hidden: Sequence[int] = (1000,),
    num_classes: int = 10,
    activation: str = "relu",
    dropout: float = 0.0,
    input_dropout: float = 0.0,
) -> nn.Sequential:
    """Flatten(-dropout), then Linear-activation(-dropout) per hidden width, then a Linear readout."""
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise ValueError(f"mlp: hidden must be a sequence of widths, e.g. (1000,), got {hidden!r}")
    _check_sizes("mlp", in_features=in_features, num_classes=num_classes,
                 **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
    layers: list[nn.Module] = [nn.Flatten()]
    if input_dropout:
        layers.append(nn.Dropout(input_dropout))
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), _activation(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


@register_model
def convnet(
    in_channels: int = 3, num_classes: int = 10, width: int = 32, image_size: int = 32
) -> nn.Sequential:
    """A small ConvNet: two conv-ReLU-pool stages and a two-layer classifier."""
    flat = 2 * width * (image_size // 4) ** 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(flat, 256), nn.ReLU(), nn.Linear(256, num_classes),
    )


class _Rows(nn.Module):
    """(N, C, H, W) -> (N, C * W, H): an image as a sequence of H rows of C * W features."""

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, 1, 3, 2).flatten(1, 2)


@register_model
def conv1d(
    in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 64
) -> nn.Sequential:
    """A 1-D ConvNet reading an image row by row: two Conv1d-ReLU-pool stages over the rows, a readout."""
    return nn.Sequential(
        _Rows(), nn.Conv1d(in_channels * image_size, width, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(2 * width, num_classes),
    )


class ViT(nn.Module):
    """A small vision transformer: patch embedding (a strided Conv2d), learned positions, pre-norm encoder
    layers (`nn.TransformerEncoderLayer`, batch first, so DFA sees the batch on dim 0), cls or mean pool."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, patch: int = 7,
                 dim: int = 64, depth: int = 2, heads: int = 4, mlp_ratio: int = 2, dropout: float = 0.0,
                 pool: str = "cls") -> None:
        super().__init__()
        if image_size % patch or pool not in ("cls", "mean"):
            raise ValueError(f"vit needs image_size ({image_size}) divisible by patch ({patch}) and pool "
                             f"'cls' or 'mean' (got {pool!r})")
        self.pool = pool
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2 + (pool == "cls")
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(
            dim, heads, mlp_ratio * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        if self.pool == "cls":
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        return self.head(x[:, 0] if self.pool == "cls" else x.mean(1))


@register_model
def vit(in_channels: int = 1, num_classes: int = 10, image_size: int = 28, dropout: float = 0.0,
        patch: int = 7, dim: int = 64, depth: int = 2, heads: int = 4, pool: str = "cls") -> ViT:
    """`ViT` for 28x28 MNIST / Fashion-MNIST by default: 16 patches of 7x7, dim 64, 2 layers, 4 heads, the
    head reading a cls token (`pool="mean"`: the mean of the patch tokens, no cls token)."""
    return ViT(in_channels, num_classes, image_size, patch, dim, depth, heads, dropout=dropout, pool=pool)


class GPT(nn.Module):
    """A small GPT-style decoder over tokens [N, T] -> next-token logits [N, T, vocab_size]: token embedding
    plus learned positions, pre-norm causal blocks (`nn.TransformerEncoderLayer`, batch first, a causal mask:
    position t attends to positions <= t), a final LayerNorm and a linear head over the vocabulary. Embeddings
    and norms stay on backprop under `nowt.convert`; attention's projections, the MLPs and the head learn by
    the rule. Block-level DFA: `--blocks 'blocks.*'`."""

    causal: Tensor  # the causal mask, a buffer

    def __init__(self, vocab_size: int = 256, context: int = 128, dim: int = 128, depth: int = 2,
                 heads: int = 4, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(
            dim, heads, mlp_ratio * dim, dropout, activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"gpt takes token ids [N, T] (a text dataset, e.g. --dataset fortunes), got "
                             f"{tokens.dtype} {list(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.pos.shape[1]:
            raise ValueError(f"gpt: {length} tokens exceed its context of {self.pos.shape[1]}")
        x = self.embed(tokens) + self.pos[:, :length]
        mask = self.causal[:length, :length]
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.head(self.norm(x))


@register_model
def gpt(input_shape: Sequence[int] = (128,), vocab_size: int = 256, dropout: float = 0.0, dim: int = 128,
        depth: int = 2, heads: int = 4) -> GPT:
    """`GPT` for byte-level text: 256 tokens, context input_shape[-1] (the dataset's windows, --context),
    dim 128, 2 layers, 4 heads, MLP 4 x dim."""
    return GPT(vocab_size, input_shape[-1], dim, depth, heads, dropout=dropout)


@register_model
def lenet(in_channels: int = 1, num_classes: int = 10, image_size: int = 32,
          activation: str = "relu") -> nn.Sequential:
    """BioTorch's LeNet for MNIST (its benchmark table's model): conv5(6)-act-pool, conv5(16)-act-pool,
    conv(120) over the whole remaining map (5 x 5 at 32 x 32 inputs)-act, fc 84-act, fc classes."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        raise ValueError(f"lenet needs images of at least 12 x 12, got {image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5), _activation(activation), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), _activation(activation), nn.MaxPool2d(2),
        nn.Conv2d(16, 120, side), _activation(activation), nn.Flatten(),
        nn.Linear(120, 84), _activation(activation), nn.Linear(84, num_classes),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride, self.expansion)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _shortcut(in_planes, planes, stride, self.expansion)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _shortcut(in_planes: int, planes: int, stride: int, expansion: int) -> nn.Module | None:
    if stride == 1 and in_planes == planes * expansion:
        return None
    return nn.Sequential(nn.Conv2d(in_planes, planes * expansion, 1, stride, bias=False),
                         nn.BatchNorm2d(planes * expansion))


class ResNet(nn.Module):
    """ResNet with torchvision's layer names (conv1, bn1, layer1..4, fc). `stem="imagenet"`: 7x7/2 conv and
    max-pool; `stem="cifar"`: one 3x3 conv, for 32x32 inputs (the CIFAR ResNet-20/56 use three stages)."""

    def __init__(self, block, layers: Sequence[int], num_classes: int = 1000, in_channels: int = 3,
                 widths: Sequence[int] = (64, 128, 256, 512), stem: str = "imagenet"):
        super().__init__()
        self.in_planes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; choose imagenet or cifar")
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        for i, (width, n) in enumerate(zip(widths, layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(self.in_planes, width, 2 if (j == 0 and i > 0) else 1))
                self.in_planes = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        for i, stage in enumerate(stages):
            setattr(self, f"layer{i + 1}", stage)
        self.num_stages = len(stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.in_planes, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.avgpool(x).flatten(1))


@register_model
def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


@register_model
def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


@register_model
def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, (3, 3, 3), num_classes, in_channels, widths=(16, 32, 64), stem="cifar")


@register_model
def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, (9, 9, 9), num_classes, in_channels, widths=(16, 32, 64), stem="cifar")


def _torchvision_model(arch: str) -> Callable[..., nn.Module]:
    """torchvision's own `arch` (optional dependency), for comparison with its published recipes."""

    def factory(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
        try:
            import torchvision
        except ImportError:
            raise ValueError(f"model 'tv_{arch}' needs torchvision (pip install torchvision); "
                             f"'{arch}' is nowt's own, with torchvision's layer names") from None
        if in_channels != 3:
            raise ValueError(f"tv_{arch} takes 3 input channels, not {in_channels}")
        return getattr(torchvision.models, arch)(num_classes=num_classes)

    factory.__name__ = f"tv_{arch}"
    return factory


for _arch in ("resnet18", "resnet50"):
    register_model(_torchvision_model(_arch))
