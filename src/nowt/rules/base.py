"""The rule interface: a rule decides which matrix carries a layer's error to its input."""

from __future__ import annotations

import math
import numbers
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeGuard, Union, get_args, get_origin

import torch
from torch import Tensor, nn

from nowt.ops import LayerOp, feedback_forward

#: "match" (the default of `nowt.convert`): B ~ U(-sqrt(3) s, sqrt(3) s) with s = std(W) of the layer at
#: conversion, so B has the spread of the model's own weights; the others are PyTorch's fixed-scale inits.
INITS = ("match", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")
#: The scale nowt's own models and reproductions were drawn at (`nowt train` passes it explicitly).
FAN_IN_INIT = "kaiming_uniform"


@dataclass(frozen=True)
class Option:
    """One option of a rule, declared once: on the rule's class, or on the base class of the rules that share
    it (`init` and `scale` on `RandomFeedbackRule`; target propagation's on its rule class).

    Everything else is made from it: the rule's attribute and default (`Rule.__init__`), its check
    (`check_option`, called by `Rule.validate`), and, where `config` is true, a `nowt.train.TrainConfig`
    field, TOML key and `nowt train` flag (`nowt.train.schema`), refused for the rules that do not declare it.

    Attributes:
      name, default: the keyword and its value when not given.
      help: what it does (the flag's help text).
      kind: its type where `default` does not say it (a None or tuple default): `float | None`,
        `tuple[str, ...]`.
      choices: the values allowed, in the order the help lists them.
      min, gt, lt: numeric bounds (>=, >, <), of each entry for a tuple.
      what: the noun the range error uses ("a number of batches"; by default "an int" or "a number").
      length: how many entries a tuple option takes.
      config: False for an option with no TrainConfig field and no flag (a callable, a storage choice for
        callers of `nowt.convert`, one `nowt train` sets itself).
      flag, metavar: the CLI flag when not --name, and its metavar when not NAME.
      train: where TrainConfig's field differs from the rule's own default or bounds, e.g.
        {"default": 256} (the weight mirror's warm-up batch: `nowt train` keeps 256; the rule's 0 sizes it).
    """

    name: str
    default: Any
    help: str = ""
    kind: Any = None
    choices: tuple[Any, ...] | None = None
    min: float | None = None
    gt: float | None = None
    lt: float | None = None
    what: str = ""
    length: int | None = None
    config: bool = True
    flag: str | None = None
    metavar: str | None = None
    train: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def hint(self) -> Any:
        """The option's type: `kind`, or the type of its default."""
        return self.kind if self.kind is not None else type(self.default)

    def bounds(self, **overrides: Any) -> dict[str, float]:
        """{"min" / "gt" / "lt": bound} of the bounds declared (`overrides` replace them: TrainConfig's)."""
        found = {k: getattr(self, k) for k in ("min", "gt", "lt") if getattr(self, k) is not None}
        return {**found, **{k: v for k, v in overrides.items() if k in ("min", "gt", "lt")}}


def declare(*options: Option) -> dict[str, Option]:
    """A rule's `options`, {name: Option}, in the order given (the order of the flags and of `repr`)."""
    return {o.name: o for o in options}


def bounds_text(bounds: Mapping[str, float]) -> str:
    """">= 0 and < 1" for {"min": 0, "lt": 1}."""
    signs = {"min": ">=", "gt": ">", "lt": "<"}
    return " and ".join(f"{signs[k]} {bounds[k]}" for k in signs if k in bounds)


def in_bounds(bounds: Mapping[str, float], x: Any) -> bool:
    """Whether the number x is within `bounds` (NaN never is)."""
    return not (("min" in bounds and not x >= bounds["min"]) or ("gt" in bounds and not x > bounds["gt"])
                or ("lt" in bounds and not x < bounds["lt"]))


def _is_number(kind: Any, value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if kind is int else isinstance(value, numbers.Real)


def check_option(option: Option, value: Any) -> None:
    """The one check of a rule option's value, from its declaration: a choice among `choices`, a number of its
    type within its bounds (each entry of a tuple, and their count). Other types (strings, flags, callables)
    are the rule's own `validate`'s to check. Raises ValueError naming the option."""
    hint, name = option.hint, option.name
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    kind = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if value is None and (optional or option.default is None):
        return
    if option.choices is not None:
        if value not in option.choices:
            choices = [str(c) for c in option.choices]
            either = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
            raise ValueError(f"unknown {name} {value!r}; choose {either}")
        return
    bounds = option.bounds()
    if get_origin(kind) is tuple:
        element = get_args(kind)[0]
        if element not in (int, float) or not (bounds or option.length):
            return
        count = f"{option.length} " if option.length else "a list of "
        what = option.what or count + ("ints" if element is int else "numbers")
        if not (isinstance(value, list | tuple) and (not option.length or len(value) == option.length)
                and all(_is_number(element, v) and in_bounds(bounds, v) for v in value)):
            raise ValueError(f"{name} must be {what} {bounds_text(bounds)}, got {value!r}")
        return
    if kind in (int, float) and not (_is_number(kind, value) and in_bounds(bounds, value)):
        what = option.what or ("an int" if kind is int else "a number")
        text = " ".join(p for p in (what, bounds_text(bounds), "or None" if optional else "") if p)
        raise ValueError(f"{name} must be {text}, got {value!r}")


class RuleLayer(Protocol):
    """What a rule needs of a layer it trains: the layers of `nowt.layers` (`FeedbackLayer`) are these, so
    that rules need not import `nowt.layers` (which imports them).

    A rule reads the layer's forward weight and bias and its op (the geometry that forms the output and the
    gradients), keeps its per-layer state on it as buffers (`register_buffer`) or plain attributes of its
    own naming (`feedback_std`, DFA's `dfa_context`: the `__getattr__` / `__setattr__` below), and reads B,
    `feedback`: the buffer or parameter registered, or what `Rule.materialized_feedback` makes.
    """

    rule: Rule
    op: LayerOp
    last_input_shape: torch.Size | None  # the most recent input's shape
    backprop_only: bool  # True while `nowt.metrics.backprop_mode` asks for the true gradient
    _buffers: dict[str, Tensor | None]

    @property
    def weight(self) -> Tensor: ...

    @property
    def bias(self) -> Tensor | None: ...

    @property
    def feedback(self) -> Tensor: ...

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def __getattr__(self, name: str) -> Any: ...  # the rule's own per-layer state

    def __setattr__(self, name: str, value: Any) -> None: ...


#: A rule-trained layer or any module that gets feedback like one (a DFA block), for helpers taking either.
LayerLike = nn.Module | RuleLayer


def is_rule_layer(module: object) -> TypeGuard[RuleLayer]:
    """Whether `module` is a layer some rule trains (one with a `Rule` as its `rule`)."""
    return isinstance(getattr(module, "rule", None), Rule)


class Rule:
    """A learning rule for a layer. Subclasses set `name` and override `setup` and/or `feedback`.

    A rule instance is shared by every layer it converts and keeps no per-layer state itself: that state
    (feedback matrices, seeds) lives on the layer as buffers or parameters, so `state_dict`, `.to()`,
    `copy.deepcopy` and DDP see it.
    """

    name: ClassVar[str] = ""
    #: The options the rule takes, each declared once (`Option`), by name: `declare(Option(...), ...)`.
    options: ClassVar[dict[str, Option]] = {}
    #: True where the backward pass reads the layer's own forward weights (backprop, sign symmetry).
    transports_weights: bool = True
    #: Why the rule needs weight decay to do what it promises, where it does (kp: W - B shrinks only by the
    #: decay); a run without decay is warned with it.
    needs_weight_decay: ClassVar[str | None] = None
    #: What `setup` registers that layers sharing one weight Parameter share, drawn once (kp's B: W's sum).
    tied_state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(
                f"rule {self.name!r} got unknown option(s) {sorted(unknown)}; its options: {known}"
            )
        for key, option in self.options.items():
            setattr(self, key, options.get(key, option.default))
        self.validate()

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """{option name: default}."""
        return {name: option.default for name, option in cls.options.items()}

    @classmethod
    def idle_options(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """{option: why it has no effect} for the options that the others' `values` (every option's, by
        name) leave without effect. `validate` refuses one set to other than its default; `nowt train`
        refuses one given as a flag even at its default (`check_flags_apply`). None by default."""
        return {}

    def validate(self) -> None:
        """Checks option values, each against its declaration (`check_option`), and refuses an idle option
        (`idle_options`) set to other than its default; raises ValueError on a bad one. A rule overrides it
        (calling this first) for what one option's declaration cannot say."""
        for key, option in self.options.items():
            check_option(option, getattr(self, key))
        values = {key: getattr(self, key) for key in self.options}
        for key, why in self.idle_options(values).items():
            if values[key] != self.options[key].default:  # a default is no request
                shown = format(values[key], "g") if isinstance(values[key], float) else repr(values[key])
                raise ValueError(f"{key} ({shown}) has no effect: {why}")

    def setup(self, layer: RuleLayer, generator: torch.Generator) -> None:
        """Creates the layer's feedback state (called once, by `nowt.convert`)."""

    def setup_model(self, model: nn.Module) -> None:
        """Called once by `nowt.convert` after every layer is swapped (DFA hooks the model's output here)."""

    def materialized_feedback(self, layer: RuleLayer) -> Tensor:
        """`layer.feedback` where no `feedback` buffer or parameter is registered: W itself by default."""
        return layer.weight

    # Whole-model hooks: what a rule needs from the training loop, so the loop never asks a rule's name.

    def begin_training(self, model: nn.Module, batch_size: int) -> None:
        """Once before the first optimizer step of a fresh (not resumed) run, after one forward pass of a
        training batch; `batch_size` is the global training batch. (Weight mirrors: the warm-up.)"""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After every optimizer step; `step` counts optimizer steps from 1 and is checkpointed by the
        caller, so a resumed run calls with the numbers of an unbroken one. (Weight mirrors: the mirror.)"""

    def feedback_tensors(self, layer: RuleLayer) -> list[Tensor]:
        """The random feedback tensors an init scheme may redraw (B of fa, kp, wm); [] by default."""
        return []

    def alignment_pairs(self, model: nn.Module) -> dict[str, tuple[Tensor | None, Tensor | None]]:
        """{name of each of this rule's layers in `model`: (B, the matrix backprop uses in B's place)}.

        An angle between the two says how well the rule aligns; a None (a matrix not defined, or not made
        yet) gives nan. By default B is `layer.feedback` and the reference the layer's own W.
        """
        return {name: (layer.feedback, layer.weight) for name, layer in self.layers(model).items()}

    def layers(self, model: nn.Module) -> dict[str, RuleLayer]:
        """The layers of `model` this rule instance trains, by qualified name, in module order."""
        return {name: m for name, m in model.named_modules() if is_rule_layer(m) and m.rule is self}

    def feedback(self, layer: RuleLayer) -> Tensor | None:
        """The matrix (weight-shaped) that carries the error to the input this step; None means W itself."""
        return None

    def forward(self, layer: RuleLayer, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():  # evaluation: no backward, so no B to form (a sign rule's costs)
            return layer.op.forward(x, layer.weight, layer.bias)
        matrix = self.feedback(layer)
        if matrix is None:
            return layer.op.forward(x, layer.weight, layer.bias)
        return feedback_forward(layer.op, x, layer.weight, layer.bias, matrix)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options)
        return f"{type(self).__name__}({self.name!r}{', ' if opts else ''}{opts})"

    def __eq__(self, other: object) -> bool:
        # `layer.rule == "fa"` reads naturally; two rules are equal when name and options agree.
        if isinstance(other, str):
            return other == self.name
        if isinstance(other, Rule):
            return repr(self) == repr(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(repr(self))


def random_matrix(
    shape: torch.Size,
    generator: torch.Generator,
    init: str = "kaiming_uniform",
    scale: float = 1.0,
    device: torch.device | str = "cpu",
    std: float | None = None,
) -> Tensor:
    """A random float32 CPU matrix of `shape` drawn like a fresh layer's weight.

    kaiming_uniform (the default here) is the distribution `nn.Linear` and `nn.Conv2d` initialise their own
    weights from: U(-1/sqrt(fan_in), 1/sqrt(fan_in)). "match" is U(-sqrt(3) std, sqrt(3) std), a uniform
    of standard deviation `std` (a layer's W's: `RandomFeedbackRule.weight_std`); its draw takes the same
    numbers from `generator` as kaiming_uniform's, so one seed gives the same matrix rescaled. Without a
    positive `std` it falls back to kaiming_uniform. Drawn on `device` with `generator` (a generator of
    that device); fixed feedback is drawn on the CPU so that one seed gives one matrix on every device.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    m = torch.empty(shape, device=device)
    if init == "match" and std:
        bound = math.sqrt(3.0) * std
        m.uniform_(-bound, bound, generator=generator)
    elif init in ("match", "kaiming_uniform"):
        nn.init.kaiming_uniform_(m, a=math.sqrt(5), generator=generator)
    elif init == "kaiming_normal":
        nn.init.kaiming_normal_(m, generator=generator)
    elif init == "xavier_uniform":
        nn.init.xavier_uniform_(m, generator=generator)
    else:
        nn.init.xavier_normal_(m, generator=generator)
    return m.mul_(scale)


class RandomFeedbackRule(Rule):
    """Base of the rules whose feedback starts as a seeded random matrix B stored on the layer."""

    options: ClassVar[dict[str, Option]] = declare(
        Option("init", "match", "B's initial distribution (see `random_matrix`)", choices=INITS,
               config=False),
        Option("scale", 1.0, "a factor on B's initial draw", gt=0.0, config=False),
    )
    transports_weights = False
    init: str  # the options' values (set by `Rule.__init__`)
    scale: float

    def weight_std(self, layer: RuleLayer) -> float | None:
        """The spread "match" draws B at: std(W) over all of the layer's weight entries (a convolution's
        kernel too, whose fan-in B shares), read once at conversion and kept on the layer as
        `feedback_std` (a plain attribute: a redraw after `to_empty`, where W holds no values yet, uses it).
        None for the fixed-scale inits, and where W's spread is 0 or not finite (a zero-initialised layer):
        B then falls back to the fan-in default, kaiming_uniform."""
        if self.init != "match":
            return None
        std = layer.__dict__.get("feedback_std")
        if std is None:
            std = float(layer.weight.detach().float().std(correction=0)) if layer.weight.numel() else 0.0
            std = std if math.isfinite(std) and std > 0 else 0.0
            layer.feedback_std = std
        return std or None

    def initial_feedback(self, layer: RuleLayer, generator: torch.Generator) -> Tensor:
        w = layer.weight
        std = self.weight_std(layer)
        return random_matrix(w.shape, generator, self.init, self.scale, std=std).to(w.device, w.dtype)

    def setup(self, layer: RuleLayer, generator: torch.Generator) -> None:
        layer.register_buffer("feedback", self.initial_feedback(layer, generator))

    def feedback(self, layer: RuleLayer) -> Tensor:
        return layer.feedback

    def materialized_feedback(self, layer: RuleLayer) -> Tensor:
        raise AttributeError(f"{self.name}: this layer has no feedback matrix yet (`setup` registers it)")

    def feedback_tensors(self, layer: RuleLayer) -> list[Tensor]:
        return [layer.feedback]


def rule_layers(model: nn.Module) -> dict[str, RuleLayer]:
    """Every rule-trained layer of `model` by qualified name: found by its `rule`, so that rules need not
    import `nowt.layers` (which imports them)."""
    return {name: m for name, m in model.named_modules() if is_rule_layer(m)}


def host_value(module: LayerLike, name: str) -> Any:
    """`module.<name>.tolist()`, read from the device once and then cached for as long as the buffer is the
    same tensor at the same version: a GPU would otherwise sync on every forward. `.to()` makes a new
    tensor and `load_state_dict` bumps the version, so both are seen."""
    t = getattr(module, name)
    cache = module.__dict__.setdefault("_host_values", {})
    if cache.get(name, (None,))[0] != _version_key(t):
        cache[name] = (_version_key(t), t.tolist())
    return cache[name][1]


def increment_buffer(module: LayerLike, name: str) -> int:
    """Adds 1 to an integer scalar buffer and returns its value before, keeping `host_value`'s cache valid
    without reading the device."""
    value = host_value(module, name)
    getattr(module, name).add_(1)
    module.__dict__["_host_values"][name] = (_version_key(getattr(module, name)), value + 1)
    return value


def _version_key(t: Tensor) -> tuple[int, int, torch.device, int]:
    return id(t), t.data_ptr(), t.device, t._version
