"""Augmentation: torchvision's transforms when it is installed, small tensor versions otherwise.

Ours take and return a float image tensor [C, H, W] and draw from torch's global RNG (checkpointed by the
trainer, so a resumed run draws the same crops).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

Transform = Callable[[Tensor], Tensor]

try:
    import torchvision.transforms as T  # optional
except ImportError:  # pragma: no cover - depends on the environment
    T = None


class Compose:
    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def __call__(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x


class RandomCrop:
    """A random `size` x `size` window of the image zero-padded by `padding` on each side."""

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def __call__(self, x: Tensor) -> Tensor:
        x = F.pad(x, [self.padding] * 4)
        top = int(torch.randint(0, x.shape[-2] - self.size + 1, ()))
        left = int(torch.randint(0, x.shape[-1] - self.size + 1, ()))
        return x[..., top:top + self.size, left:left + self.size]


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x: Tensor) -> Tensor:
        return x.flip(-1) if float(torch.rand(())) < self.p else x


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class Resize:
    """Scales the shorter side to `size`, keeping the aspect ratio."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        out = (max(1, round(h * scale)), max(1, round(w * scale)))
        return F.interpolate(x[None], size=out, mode="bilinear", antialias=True, align_corners=False)[0]


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, x: Tensor) -> Tensor:
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        return x[..., top:top + self.size, left:left + self.size]


class RandomResizedCrop:
    """A random crop of 8-100% of the area, aspect ratio 3/4-4/3, resized to `size` (the ImageNet recipe)."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.08, 1.0)):
        self.size, self.scale = size, scale

    def __call__(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        for _ in range(10):
            area = h * w * float(torch.empty(()).uniform_(*self.scale))
            ratio = math.exp(float(torch.empty(()).uniform_(math.log(3 / 4), math.log(4 / 3))))
            ch, cw = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
            if 0 < ch <= h and 0 < cw <= w:
                top, left = int(torch.randint(0, h - ch + 1, ())), int(torch.randint(0, w - cw + 1, ()))
                x = x[..., top:top + ch, left:left + cw]
                break
        else:  # no valid window found: the central square
            x = CenterCrop(min(h, w))(x)
        return F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", antialias=True,
                             align_corners=False)[0]


def cifar_augmentation(size: int = 32) -> Transform:
    """A random `size` x `size` crop of the zero-padded image and a horizontal flip (the usual CIFAR recipe:
    4 pixels of padding at 32 x 32). Images resized to another `size` (--image-size) are cropped to that
    size, with the padding scaled alike (size / 8, rounded half up), so training sees what the test sees."""
    padding = (size + 4) // 8
    if T is not None:
        return T.Compose([T.RandomCrop(size, padding=padding), T.RandomHorizontalFlip()])
    return Compose([RandomCrop(size, padding=padding), RandomHorizontalFlip()])


def imagenet_transform(train: bool, size: int = 224) -> Transform:
    """Tensor [3, H, W] in [0, 1] -> normalised [3, size, size]: random resized crop and flip for training,
    resize to size * 8/7 and centre crop for evaluation."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if T is not None:
        steps = ([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip()] if train
                 else [T.Resize(size * 8 // 7, antialias=True), T.CenterCrop(size)])
        return T.Compose([*steps, T.Normalize(mean, std)])
    steps = ([RandomResizedCrop(size), RandomHorizontalFlip()] if train
             else [Resize(size * 8 // 7), CenterCrop(size)])
    return Compose([*steps, Normalize(mean, std)])
