"""PENDING (delete at the merge with wip-rules): today's behaviour behind the rule hooks of the contract.

The train package calls only the functions below where the contract has a rule hook that this branch's
`rules/` lacks. Each docstring gives the one-line replacement; after the merge every caller uses the hook
and this file goes, together with the last rule-name tests outside `rules/`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from nowt import distributed
from nowt.layers import feedback_layers
from nowt.rules import Rule, WholeNetworkRule

if TYPE_CHECKING:
    from nowt.train.config import TrainConfig
    from nowt.train.learners import Learner

#: Today's weight-mirror schedule (moves into rules/wm.py as WM's options and `after_step`): the warm-up
#: aligns B with a large noise batch; then every MIRROR_EVERY steps a noise batch of
#: MIRROR_EVERY / MIRROR_BATCH_DIVISOR of the batch tracks W.
MIRROR_WARMUP_BATCH, MIRROR_BATCH_DIVISOR, MIRROR_EVERY = 256, 8, 2


def declared_options(cls: type[Rule]) -> dict[str, Any]:
    """-> `cls.options` (once WM declares mirror_steps/mirror_warmup and targetprop declares schedule)."""
    options = dict(cls.options)
    if cls.name == "wm":
        options.update(mirror_steps=1, mirror_warmup=300)
    if issubclass(cls, WholeNetworkRule):
        options.setdefault("schedule", "parallel")
    return options


def convert_options(cls: type[Rule], options: dict[str, Any]) -> dict[str, Any]:
    """-> `options` (every declared option goes to `convert`, once the rule declares it itself)."""
    return {k: v for k, v in options.items() if k in cls.options}


def feedback_rules(model: nn.Module) -> list[Rule]:
    """-> `nowt.layers.feedback_rules(model)`."""
    found: list[Rule] = []
    for layer in feedback_layers(model).values():
        if not any(layer.rule is r for r in found):
            found.append(layer.rule)
    return found


def feedback_tensors(layer: nn.Module) -> list[Tensor]:
    """-> `layer.rule.feedback_tensors(layer)`."""
    rule = layer.rule
    return [layer.feedback] if rule.stores_feedback and not rule.transports_weights else []


def begin_training(model: nn.Module, rules: list[Rule], cfg: TrainConfig) -> None:
    """-> `for rule in rules: rule.begin_training(model, cfg.batch_size)` (WM: the warm-up mirror)."""
    import nowt

    if any(r == "wm" for r in rules):
        nowt.mirror(model, cfg.mirror_warmup, batch_size=MIRROR_WARMUP_BATCH)


def after_step(model: nn.Module, rules: list[Rule], step: int, cfg: TrainConfig) -> None:
    """-> `for rule in rules: rule.after_step(model, step)` (WM: its mirror schedule)."""
    import nowt

    if step % MIRROR_EVERY == 0 and any(r == "wm" for r in rules):
        # the same noise batch on every rank (local slices of an uneven batch differ by one)
        batch = max(1, cfg.batch_size * MIRROR_EVERY // (MIRROR_BATCH_DIVISOR * distributed.world()[1]))
        nowt.mirror(model, cfg.mirror_steps, batch_size=batch)


def whole_network_learner(cls: type[WholeNetworkRule], model: nn.Module, *, lr: float, seed: int,
                          **options: Any) -> Learner:
    """-> `cls.learner(model, lr=lr, seed=seed, **options)` (implemented by nowt.targetprop)."""
    from nowt.targetprop import TargetPropTrainer

    return TargetPropTrainer(model, algorithm=cls.name, lr=lr, seed=seed, **options)
