"""What every loop integration does, framework-free: run the rules' hooks and measure alignment."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from nowt.layers import feedback_layers, feedback_rules
from nowt.metrics import shape_pass, weight_angles, weight_norm_ratios
from nowt.rules.base import Rule

#: The prefix of every metric the callbacks log.
PREFIX = "nowt/"


class RuleHooks:
    """The rule instances of a converted model and their whole-model hooks."""

    def __init__(self, model: nn.Module) -> None:
        self.rules: list[Rule] = feedback_rules(model)

    @property
    def needs_forward(self) -> bool:
        """Whether some rule's `begin_training` does anything (so needs layer shapes from a forward)."""
        return any(type(r).begin_training is not Rule.begin_training for r in self.rules)

    def begin(self, model: nn.Module, batch_size: int, forward: Callable[[], Any]) -> bool:
        """`forward()` (one pass of a training batch, only where a rule needs it), then each rule's
        `begin_training(model, batch_size)`. Returns whether the forward ran."""
        ran = False
        if self.needs_forward:
            with torch.no_grad(), shape_pass(model):  # as `nowt train`'s (`show_one_batch`)
                forward()
            ran = True
        for rule in self.rules:
            rule.begin_training(model, batch_size)
        return ran

    def after_step(self, model: nn.Module, step: int) -> None:
        for rule in self.rules:
            rule.after_step(model, step)


def untrained_parameters(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> list[str]:
    """The names of the rules' own trainable parameters (`kp`'s B) that `optimizers` leave out although they
    train the layer's weight: an optimizer built before `nowt.convert` (a Trainer's `optimizers=`, its
    `create_optimizer` or an earlier `train()`), under which B would stay as drawn. A layer whose weight no
    optimizer holds by identity (frozen on purpose, or parameters flattened by a sharding wrapper) is
    not judged."""
    held = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    missing = []
    for name, layer in feedback_layers(model).items():
        weights = {id(w) for w in layer.leaf_weights()}
        if not weights & held:
            continue
        missing += [f"{name}.{key}" for key, p in layer.named_parameters(recurse=False)
                    if p.requires_grad and key != "bias" and id(p) not in weights | held]
    return missing


def check_optimizer(model: nn.Module, optimizers: Iterable[torch.optim.Optimizer]) -> None:
    """Raises a ValueError naming the rules' parameters (`kp`'s B) that `optimizers` do not train
    (`untrained_parameters`): silently, B would stay as drawn while W learns."""
    missing = untrained_parameters(model, optimizers)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ValueError(f"{', '.join(map(repr, missing[:3]))}{more}: the optimizer trains these layers' "
                         f"weights but not this parameter of their rule (kp's B), so it would stay as drawn; "
                         f"the optimizer was built before nowt.convert (passed in, or made by an earlier "
                         f"create_optimizer or train()): build it from model.parameters() after converting")


def alignment(model: nn.Module, per_layer: bool = False) -> dict[str, float]:
    """{metric: value} for a logger: the mean, min and max of `nowt.weight_angles` (degrees) and of
    `nowt.weight_norm_ratios` (||B|| / ||W||) over the layers whose feedback is not W itself (bp layers are
    0 degrees and 1 by definition) and whose angle is defined, and with `per_layer` each such layer's as
    `nowt/angle/<layer>` and `nowt/norm_ratio/<layer>`. {} where no layer has one."""
    layers = feedback_layers(model)
    angles = {n: a for n, a in weight_angles(model).items()
              if n in layers and layers[n].rule.name != "bp" and math.isfinite(a)}
    if not angles:
        return {}
    ratios = {n: r for n, r in weight_norm_ratios(model).items() if n in angles}
    metrics = {}
    for key, measured in (("angle", angles), ("norm_ratio", ratios)):
        values = list(measured.values())
        metrics.update({f"{PREFIX}{key}_mean": sum(values) / len(values), f"{PREFIX}{key}_min": min(values),
                        f"{PREFIX}{key}_max": max(values)})
        if per_layer:
            metrics.update({f"{PREFIX}{key}/{n}": v for n, v in measured.items()})
    return metrics


def to_device(batch: Any, device: torch.device) -> Any:
    """`batch` (tensors in mappings, lists and tuples) moved to `device`."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch) if not hasattr(batch, "_fields") \
            else type(batch)(*(to_device(v, device) for v in batch))
    return batch


def call_model(model: nn.Module, batch: Any) -> Any:
    """The model on a batch as loaders give it: keyword arguments from a mapping (Hugging Face), the first
    element of an (inputs, targets) list or tuple, or a tensor itself."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, list | tuple):
        return model(batch[0])
    return model(batch)


def batch_length(batch: Any) -> int:
    """The batch dimension of the first tensor in `batch`."""
    if isinstance(batch, Tensor):
        return batch.shape[0] if batch.dim() else 1
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, list | tuple) \
        else ()
    for v in values:
        n = batch_length(v)
        if n:
            return n
    return 0
