"""`nowt.mirror(model)`: the weight mirror's mirror-mode step on every `wm` layer of a model. The per-layer
maths (and the schedule `nowt train` runs) live in `nowt.rules.wm`; this is the model-level walk."""

from __future__ import annotations

from typing import Any

from torch import nn

from nowt.distributed import world
from nowt.layers import feedback_layers
from nowt.rules.wm import WeightMirror, mirror_layers


def rule_mirror_options(rule: WeightMirror) -> dict[str, Any]:
    """The `mirror_layers` options a wm rule was made with: its mirror_lr, mirror_decay, mirror_noise,
    mirror_noise_std, mirror_activation, mirror_normalize, and mirror_batch (per process) where set. The
    schedule's options (mirror_every, mirror_steps, mirror_warmup, mirror_anneal) are its hooks'."""
    options = dict(lr=rule.mirror_lr, decay=rule.mirror_decay, noise=rule.mirror_noise,
                   noise_std=rule.mirror_noise_std, activation=rule.mirror_activation,
                   normalize=rule.mirror_normalize)
    if rule.mirror_batch:  # 0: the layer's last batch, as mirror_layers' default
        options["batch_size"] = max(1, rule.mirror_batch // world()[1])
    return options


def mirror(model: nn.Module, steps: int = 1, **options: Any) -> int:
    """Runs `steps` mirror-mode steps on every `wm` layer of `model`; returns how many layers it updated.

    Each layer mirrors as its rule was made (`rule_mirror_options`: `nowt.convert(model, "wm",
    mirror_noise="uniform", ...)` holds here too); `options` given here override them for every layer
    (lr, decay, noise, noise_std, activation, normalize, batch_size, generator: `nowt.rules.wm.mirror_layers`,
    which also says how it behaves under torch.distributed). Run one forward pass first: the noise has each
    layer's last input shape.
    """
    layers = {n: m for n, m in feedback_layers(model).items() if isinstance(m.rule, WeightMirror)}
    if not layers:
        raise ValueError("mirror: the model has no layer converted with rule 'wm'")
    updated = 0
    # layer by layer, in order: mirror_layers draws each layer's noise in turn, so one call over many
    # layers draws the same numbers
    for name, layer in layers.items():
        rule = layer.rule
        assert isinstance(rule, WeightMirror)  # picked above
        updated += mirror_layers({name: layer}, steps, **{**rule_mirror_options(rule), **options})
    return updated


__all__ = ["mirror", "rule_mirror_options"]
