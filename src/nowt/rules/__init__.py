"""The registry of learning rules, by name. Adding a rule: one file with a `Rule` subclass (its options
declared on it, `Option`), one line here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from nowt.rules.base import Option, RandomFeedbackRule, Rule, check_option, declare, random_matrix

_REGISTRY: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"rule name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls
    return cls


def list_rules() -> list[str]:
    """The names of every learning rule nowt knows."""
    return list(_REGISTRY)


def config_options() -> dict[str, Option]:
    """Every option a registered rule declares with `config=True`, by name, in registry order (a rule's in
    its own order): what `nowt.train.TrainConfig`'s rule-option fields and `nowt train`'s flags are made of.
    A name has one declaration: rules that share an option share its `Option` (declare it on their common
    base), and two different declarations of one name raise ValueError."""
    found: dict[str, Option] = {}
    for name, cls in _REGISTRY.items():
        for key, option in cls.options.items():
            if option.config and found.setdefault(key, option) != option:
                raise ValueError(f"rule {name!r} declares option {key!r} differently from an earlier rule; "
                                 f"declare it once, on a class both rules share")
    return found


def make_rule(rule: str | Rule, **options: Any) -> Rule:
    if isinstance(rule, Rule):
        if options:
            raise ValueError("pass options either to the Rule you build or to convert, not both")
        return rule
    if not isinstance(rule, str) or rule.lower() not in _REGISTRY:
        raise ValueError(f"unknown rule {rule!r}; known rules: {', '.join(list_rules())}")
    return _REGISTRY[rule.lower()](**options)


def rule_class(name: str) -> type[Rule]:
    if not isinstance(name, str) or name.lower() not in _REGISTRY:
        make_rule(name)  # the same clear error for an unknown name
    return _REGISTRY[name.lower()]


class WholeNetworkRule(Rule):
    """A registry entry for an algorithm that trains a whole network, not layer by layer (target
    propagation registers its four from `nowt.targetprop`).

    It is listed by `list_rules()` so that every learning rule has one name space, but it has no per-layer
    backward, so making one (and so `nowt.convert`) raises a ValueError; `learner` builds what trains it.
    `issubclass(rule_class(name), WholeNetworkRule)` tells a caller which way to train.
    """

    def __init__(self, **options: Any) -> None:
        raise ValueError(
            f"{self.name!r} is not a per-layer rule: it trains the whole network, so nowt.convert cannot "
            f"apply it. Use {self.usage()} or `nowt train --rule {self.name}`"
        )

    @classmethod
    def usage(cls) -> str:
        """How to train with this rule from Python, for the error above."""
        return f"{cls.__name__}.learner(network, lr=..., seed=...)"

    @classmethod
    def learner(cls, model: nn.Module, *, lr: float, seed: int, betas: tuple[float, ...] = (0.9, 0.999),
                eps: float = 1e-8, **options: Any) -> Any:
        """What trains `model` one batch at a time (`train_step`, `end_epoch`, `measure`, `state_dict`, ...)
        with Adam at `lr`, `betas`, `eps`, and the class's `options` (unknown ones raise ValueError)."""
        raise NotImplementedError

    @classmethod
    def idle_options(cls, values: Mapping[str, Any], depth: int | None = None) -> dict[str, str]:
        """As `Rule.idle_options`, and those idle on a network of `depth` weight layers, where the caller
        knows it before the network is built (target propagation's inverses on one hidden layer)."""
        return {}

    @classmethod
    def resolve_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """`cls.defaults()` updated by `options`; a ValueError names the unknown ones."""
        unknown = set(options) - set(cls.options)
        if unknown:
            known = ", ".join(sorted(cls.options)) or "none"
            raise ValueError(f"rule {cls.name!r} got unknown option(s) {sorted(unknown)}; "
                             f"its options: {known}")
        return {**cls.defaults(), **options}


# Registration order is the order `list_rules()` lists them in (target propagation's names follow, registered
# by nowt.targetprop, which `import nowt` loads).
from nowt.rules import backprop, dfa, fa, kp, sign, wm  # noqa: E402

for _cls in (backprop.Backprop, fa.FeedbackAlignment, sign.USF, sign.BRSF, sign.FRSF, kp.KolenPollack,
             wm.WeightMirror, dfa.DirectFeedback, dfa.IndirectFeedback):
    register(_cls)

__all__ = ["Option", "RandomFeedbackRule", "Rule", "WholeNetworkRule", "check_option", "config_options",
           "declare", "make_rule", "random_matrix", "register", "rule_class", "rules"]
