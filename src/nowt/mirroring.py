"""`nowt.mirror(model)`: the weight mirror's mirror-mode step on every `wm` layer of a model. The per-layer
maths (and the schedule `nowt train` runs) live in `nowt.rules.wm`; this is the model-level walk."""

from __future__ import annotations

from typing import Any

from torch import nn

from nowt.layers import feedback_layers
from nowt.rules.wm import WeightMirror, mirror_layers


def mirror(model: nn.Module, steps: int = 1, **options: Any) -> int:
    """Runs `steps` mirror-mode steps on every `wm` layer of `model`; returns how many layers it updated.

    Run one forward pass first: the noise has each layer's last input shape. `options` (lr, decay,
    noise_std, batch_size, generator) and the distributed behaviour: `nowt.rules.wm.mirror_layers`.
    """
    layers = {n: m for n, m in feedback_layers(model).items() if isinstance(m.rule, WeightMirror)}
    if not layers:
        raise ValueError("mirror: the model has no layer converted with rule 'wm'")
    return mirror_layers(layers, steps, **options)


__all__ = ["mirror"]
