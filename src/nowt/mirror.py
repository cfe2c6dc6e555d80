"""`nowt.mirror(model)`: the weight mirror's mirror-mode step on every `wm` layer of a model. The per-layer
maths (and the schedule `nowt train` runs) live in `nowt.rules.wm`; this is the model-level walk."""

from __future__ import annotations

import torch
from torch import nn

from nowt.layers import feedback_layers
from nowt.rules.wm import WeightMirror, mirror_layers


def mirror(
    model: nn.Module,
    steps: int = 1,
    *,
    lr: float | None = None,
    decay: float | None = None,
    noise_std: float = 1.0,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Runs `steps` mirror-mode steps on every `wm` layer of `model`; returns how many layers it updated.

    Run one forward pass first: the noise has each layer's last input shape (batch dimension replaced by
    `batch_size` when given). Step size, decay and the distributed behaviour: `nowt.rules.wm.mirror_layers`.
    """
    layers = {n: m for n, m in feedback_layers(model).items() if isinstance(m.rule, WeightMirror)}
    if not layers:
        raise ValueError("mirror: the model has no layer converted with rule 'wm'")
    return mirror_layers(layers, steps, lr=lr, decay=decay, noise_std=noise_std, batch_size=batch_size,
                         generator=generator)


__all__ = ["mirror"]
