"""Measures of Cheon, Lee & Paik (2024): per-neuron alignment of forward and feedback weights, effective rank,
learning speed as the area under a test-accuracy curve, the generalisation gap, and out-of-distribution
MNIST variants (translated, rotated, scaled), all in plain torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt.layers import feedback_layers
from nowt.metrics import alignment_pairs, evaluate, row_angles
from nowt.ops import LocallyConnected2dOp, TransposedLinearOp

OOD_KINDS = ("translate", "rotate", "scale")


def neuron_angles(weight: Tensor, feedback: Tensor, input_dim: int = 1) -> Tensor:
    """Degrees between row i of W^T and row i of B, for every input unit i of a layer.

    With our layers' convention (`feedback` has the weight's shape [out, in, ...] and carries the error to
    the input), row i of W^T is `weight[:, i]`, the unit's outgoing forward weights, and row i of the
    paper's B is `feedback[:, i]`, the weights that bring the error back to that unit. Conv kernels are
    flattened per input channel. A zero vector gives nan. Untrained random pairs sit near 90 degrees.
    `input_dim`: the weight's input axis, 0 for weights stored (in, out, ...) (GPT-2's Conv1D, transposed
    convolutions).
    """
    if weight.shape != feedback.shape:
        raise ValueError(
            f"weight and feedback shapes differ: {tuple(weight.shape)} vs {tuple(feedback.shape)}"
        )
    if weight.dim() < 2:
        raise ValueError(f"neuron_angles needs a matrix or a kernel, got shape {tuple(weight.shape)}")
    rows = weight.shape[input_dim]
    return row_angles(weight.movedim(input_dim, 0).reshape(rows, -1),
                      feedback.movedim(input_dim, 0).reshape(rows, -1))


def mean_neuron_angles(model: nn.Module) -> dict[str, float]:
    """{layer name: mean per-neuron angle} for every rule-trained layer whose feedback has W's shape.

    Backprop layers give 0; layers with another feedback shape (e.g. direct feedback) are left out, and so
    are locally connected layers (a column of their weight is a patch offset, shared by no single unit).
    Units whose W^T row or B row is zero (no angle) are left out of the mean; nan if W or B holds nan or inf.
    """
    out = {}
    layers = feedback_layers(model)
    for name, (fb, _) in alignment_pairs(model).items():
        op, weight = layers[name].op, layers[name].weight
        if fb is not None and fb.shape == weight.shape and not isinstance(op, LocallyConnected2dOp):
            stored_in_out = isinstance(op, TransposedLinearOp) or getattr(op, "transposed", False)
            angles = neuron_angles(weight, fb, 0 if stored_in_out else 1)
            finite = bool(torch.isfinite(weight).all() and torch.isfinite(fb).all())
            out[name] = float(angles.nanmean()) if finite else math.nan
    return out


def effective_rank(matrix: Tensor) -> float:
    """exp(H(p)) with p = s / sum(s) over the singular values s of `matrix` (Roy & Vetterli 2007).

    Between 1 (rank one) and min(rows, cols) (all singular values equal). Tensors of higher order
    (conv kernels) are read as [out, everything else].
    """
    if matrix.dim() < 2:
        raise ValueError(f"effective_rank needs a matrix, got shape {tuple(matrix.shape)}")
    s = torch.linalg.svdvals(matrix.detach().double().reshape(matrix.shape[0], -1))
    total = s.sum()
    if total == 0:
        raise ValueError("effective_rank of a zero matrix is undefined")
    p = s / total
    p = p[p > 0]  # 0 log 0 = 0
    return math.exp(float(-(p * p.log()).sum()))


def effective_ranks(model: nn.Module) -> dict[str, float]:
    """{layer name: effective rank of its forward weight} for every rule-trained layer."""
    return {name: effective_rank(layer.weight) for name, layer in feedback_layers(model).items()}


def area_under_curve(
    values: Sequence[float], x: Sequence[float] | None = None, *, normalize: bool = True
) -> float:
    """Trapezoidal area under `values` sampled at `x` (default 0, 1, 2, ...).

    With `normalize` the area is divided by the length of the x range, so a test-accuracy curve gives its
    mean height in accuracy units: a curve that rises sooner scores higher (learning speed).
    """
    y = torch.as_tensor(values, dtype=torch.double)
    t = torch.arange(len(y), dtype=torch.double) if x is None else torch.as_tensor(x, dtype=torch.double)
    if y.dim() != 1 or t.shape != y.shape or len(y) < 2:
        raise ValueError(f"need at least two values and as many x as values, got {len(y)} and {len(t)}")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError("x must be strictly increasing")
    area = float(torch.trapezoid(y, t))
    return area / float(t[-1] - t[0]) if normalize else area


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000
) -> tuple[float, float]:
    """(accuracy in percent, mean cross-entropy) of `model` on (x, y), in eval mode."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need as many inputs as labels and at least one, got {len(x)} and {len(y)}")
    batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    result = evaluate(model, batches)
    return result["accuracy"], result["loss"]


def generalization_gap(
    model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], *, batch_size: int = 1000
) -> dict[str, float]:
    """{"accuracy": train minus test accuracy (points), "loss": test minus train cross-entropy}."""
    train_acc, train_loss = accuracy_and_loss(model, *train, batch_size=batch_size)
    test_acc, test_loss = accuracy_and_loss(model, *test, batch_size=batch_size)
    return {"accuracy": train_acc - test_acc, "loss": test_loss - train_loss}


def _per_image(value: float | Sequence[float] | Tensor, n: int, width: int, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(value, dtype=dtype)
    return t.expand(n, width) if width > 1 else t.reshape(-1).expand(n)


def affine_images(
    images: Tensor,
    *,
    shift: float | Sequence[float] | Tensor = (0.0, 0.0),
    angle: float | Tensor = 0.0,
    scale: float | Tensor = 1.0,
) -> Tensor:
    """Images [N, C, H, W] scaled by `scale` and rotated by `angle` degrees about their centre, then moved
    by `shift` = (dx, dy) pixels; bilinear, zero outside. Each argument may be one value or one per image.

    Conventions as the image is displayed (row 0 on top): dx > 0 moves content right, dy > 0 moves it
    down, angle > 0 turns it counter-clockwise (90 degrees is `torch.rot90(images, 1, (-2, -1))` on a
    square image), scale > 1 enlarges it.
    """
    if images.dim() != 4:
        raise ValueError(f"affine_images expects [N, C, H, W], got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    shift_t = _per_image(shift, n, 2, dtype)
    theta_deg, s = _per_image(angle, n, 1, dtype), _per_image(scale, n, 1, dtype)
    if bool((s <= 0).any()):
        raise ValueError("scale must be positive")
    # affine_grid maps each output position to the input position it samples (normalised coordinates,
    # x right, y down, one pixel = 2/W wide): input = R(-angle) (output - t) / s.
    rad = torch.deg2rad(theta_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    inv = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2) / s[:, None, None]
    t = torch.stack([2 * shift_t[:, 0] / w, 2 * shift_t[:, 1] / h], -1)
    theta = torch.cat([inv, -(inv @ t[:, :, None])], -1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ood_images(images: Tensor, kind: str, magnitude: float, *, seed: int = 0) -> Tensor:
    """An out-of-distribution copy of `images` [N, C, H, W] (values with 0 as background, e.g. in [0, 1]).

    kind "translate": every image moved `magnitude` pixels in its own random direction;
    "rotate": turned by `magnitude` degrees, clockwise or counter-clockwise at random;
    "scale": scaled by the factor `magnitude` about the centre (< 1 shrinks, > 1 enlarges).
    The random directions come from `seed`, so a variant is the same on every call.
    """
    if kind not in OOD_KINDS:
        raise ValueError(f"unknown OOD kind {kind!r}; choose one of {', '.join(OOD_KINDS)}")
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    if kind == "translate":
        direction = torch.rand(n, generator=gen, dtype=torch.double) * 2 * math.pi
        shift = magnitude * torch.stack([direction.cos(), direction.sin()], -1)
        return affine_images(images, shift=shift.to(images.dtype))
    if kind == "rotate":
        sign = torch.randint(0, 2, (n,), generator=gen).to(images.dtype) * 2 - 1
        return affine_images(images, angle=magnitude * sign)
    if not magnitude > 0:
        raise ValueError(f"a scale factor must be positive, got {magnitude}")
    return affine_images(images, scale=magnitude)


__all__ = [
    "OOD_KINDS",
    "accuracy_and_loss",
    "affine_images",
    "area_under_curve",
    "effective_rank",
    "effective_ranks",
    "generalization_gap",
    "mean_neuron_angles",
    "neuron_angles",
    "ood_images",
]
