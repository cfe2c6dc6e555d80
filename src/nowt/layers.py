"""Thin layers: a torch layer whose backward is decided by a rule. They subclass the torch layer
(`nn.Linear`, `nn.Conv2d`, ...), so code that checks types or reads `.weight`, `.in_features`, `.kernel_size`
keeps working."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal, Protocol, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.utils import parametrize

from nowt import lc
from nowt.ops import ConvOp, LinearOp, LocallyConnected2dOp, TransposedLinearOp, exporting
from nowt.rules import Rule
from nowt.rules.base import RuleLayer


class FeedbackLayer(nn.Module):
    """Mixin for rule-trained layers: `.weight`, `.bias`, `.rule`, `.feedback` (B, the weight's shape)."""

    rule: Rule
    op: LinearOp | ConvOp | LocallyConnected2dOp
    last_input_shape: torch.Size | None = None  # the most recent input's shape (weight mirrors drive noise
    # of this shape)
    backprop_only = False  # set by `nowt.metrics.backprop_mode` to compute the true gradient
    own_state: tuple[str, ...] = ("weight", "bias")  # the layer's own state, not the rule's
    skipped = False  # set when the model ran and this layer did not (`nowt.convert`'s first-forward check)
    draw_state: Tensor | None = None  # the generator state `nowt.convert` drew this layer's feedback from
    last_padding: tuple[int, ...] = ()  # F.pad's list `prepare_input` applied to the most recent input (DFA's
    # B spans the input itself, not its padded copy)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_input(x)
        self.last_input_shape = x.shape
        if self.backprop_only or exporting():  # torch.export: an inference graph, the forward alone
            return self.op.forward(x, self.weight, self.bias)
        return self.rule.forward(self, x)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "feedback":  # no `feedback` registered: the rule says what B is (W for backprop,
                return self.rule.materialized_feedback(self)  # DFA's shared and seeded B materialised)
            raise

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"

    def leaf_weights(self) -> list[Tensor]:
        """The tensors `.weight` is made of, which the optimizer updates: the Parameter, its parametrization's
        originals, or StandardizedConv2d's raw weight and gain (a parametrized or computed `.weight` is a
        new tensor at every access; attention's Projection holds none: its owner's weight)."""
        if parametrize.is_parametrized(self, "weight"):
            return list(self.parametrizations.weight.parameters())
        own: list[Tensor] = [p for n, p in self._parameters.items()
                             if n in self.own_state and n != "bias" and p is not None]
        return own or [self.weight]

    def _rule_state(self) -> list[Tensor]:
        return [t for n, t in (*self._parameters.items(), *self._buffers.items())
                if n not in self.own_state and t is not None]

    def _apply(self, fn, recurse: bool = True):
        """As nn.Module's; the rule's state moved off the meta device (`to_empty`) holds no values, so it is
        redrawn as `nowt.convert` drew it."""
        was_meta = any(t.is_meta for t in self._rule_state())
        out = super()._apply(fn, recurse)
        state = self._rule_state()
        if was_meta and state and not any(t.is_meta for t in state):
            if self.draw_state is None or getattr(self, "dfa_context", None) is not None:
                raise ValueError(f"{type(self).__name__} ({self.rule.name}) left the meta device with "
                                 f"uninitialised feedback, which nowt cannot redraw; convert the model after "
                                 f"materialising it")
            # Drawn on a stand-in with W's shape (an attention projection's W, its owner's, may still be on
            # the meta device here), then copied in: the same tensors, the same draw as convert's.
            stand_in = nn.Module()
            stand_in.weight = nn.Parameter(self.weight.new_empty(self.weight.shape, device=state[0].device))
            stand_in.__dict__["feedback_std"] = self.__dict__.get("feedback_std")  # init="match": W's spread
            # at convert. A plain module with W only, not a whole layer: what `setup` reads of one.
            self.rule.setup(cast(RuleLayer, stand_in), torch.Generator().set_state(self.draw_state))
            with torch.no_grad():
                for name, t in (*stand_in._parameters.items(), *stand_in._buffers.items()):
                    if name != "weight":
                        getattr(self, name).copy_(t)
        return out


def adopt_parameters(layer: nn.Module, m: nn.Module) -> None:
    """Gives `layer` m's weight and bias: the same Parameter objects, or, for a parametrized m (weight
    norm), m's parametrizations, so the layer computes the weight m's forward uses from the same originals
    (under the same state-dict keys) and the rule applies to that weight."""
    if not parametrize.is_parametrized(m):
        layer.weight, layer.bias = m.weight, m.bias
        return
    for name in ("weight", "bias"):
        if parametrize.is_parametrized(m, name):
            layer._parameters.pop(name, None)  # a TransposedLinear made bare has none yet
        else:
            setattr(layer, name, getattr(m, name))
    # torch's own steps of register_parametrization (private helpers, stable since torch 1.9)
    parametrize._inject_new_class(layer)
    parametrizations = m.parametrizations
    assert isinstance(parametrizations, nn.ModuleDict)  # `is_parametrized`: torch's ModuleDict of them
    layer.parametrizations = parametrizations
    for name in parametrizations:
        parametrize._inject_property(layer, name)


class Linear(FeedbackLayer, nn.Linear):
    @classmethod
    def from_module(cls, m: nn.Linear, rule: Rule) -> Linear:
        layer = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        adopt_parameters(layer, m)
        layer.rule, layer.op = rule, LinearOp()
        return layer.train(m.training)


class TransposedLinear(FeedbackLayer):
    """transformers' `Conv1D` (GPT-2), y = x W + b with W stored (in, out), trained by a rule; B is shaped
    like W. `register_transformers` makes the class, a subclass of transformers' own, once it is imported."""

    @classmethod
    def from_module(cls, m: nn.Module, rule: Rule) -> TransposedLinear:
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)  # not Conv1D's __init__, which would draw a weight only to drop it
        layer.nf, layer.nx = m.nf, m.nx
        adopt_parameters(layer, m)
        layer.rule, layer.op = rule, TransposedLinearOp()
        return layer.train(m.training)


def register_transformers() -> None:
    """Makes transformers' `Conv1D` convertible, once transformers has defined it (nowt never imports it
    itself; `nowt.convert` calls this)."""
    base = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if base is not None and base not in CONVERTIBLE:
        cls = cast(Replacement, type("Conv1D", (TransposedLinear, base), {"__module__": __name__}))
        globals()["Conv1D"] = CONVERTIBLE[base] = cls  # a module attribute: a converted model pickles


def __getattr__(name: str):
    if name == "Conv1D":  # unpickling a converted GPT-2 in a fresh process: make the class first
        import transformers.pytorch_utils  # noqa: F401
        register_transformers()
        return globals()["Conv1D"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_C = TypeVar("_C", bound="_Conv")
_S = TypeVar("_S", bound="StandardizedConv2d")


class _Conv(FeedbackLayer):
    """Shared by every convolution, plain or transposed, of any dimension: one `ConvOp` geometry."""

    op: ConvOp
    kernel_size: tuple[int, ...]  # nn.Conv*'s own attributes, read by `forward` and `prepare_input`
    stride: tuple[int, ...]
    padding: str | tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: Literal["zeros", "reflect", "replicate", "circular"]
    _reversed_padding_repeated_twice: list[int]

    @classmethod
    def from_module(cls: type[_C], m: nn.modules.conv._ConvNd, rule: Rule) -> _C:
        args = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        if m.transposed:  # ConvTranspose's signature: output_padding, groups, bias, dilation, padding_mode
            layer = cls(*args, m.output_padding, m.groups, m.bias is not None, m.dilation, m.padding_mode,
                        device="meta")
        else:
            layer = cls(*args, m.dilation, m.groups, m.bias is not None, m.padding_mode, device="meta")
        adopt_parameters(layer, m)
        # String paddings ("same") and non-zero padding modes are applied by an explicit pad, so the op
        # itself only ever sees symmetric integer zero padding.
        explicit = isinstance(m.padding, str) or m.padding_mode != "zeros"
        padding = (0,) * len(m.kernel_size) if explicit or isinstance(m.padding, str) else tuple(m.padding)
        layer.rule = rule
        layer.op = ConvOp(tuple(m.stride), padding, tuple(m.dilation), m.groups, m.transposed,
                          tuple(m.output_padding) if m.transposed else ())
        return layer.train(m.training)

    pad_same = False  # timm's Conv2dSame: TensorFlow's "SAME" padding, computed from each input's size

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == len(self.kernel_size) + 1:  # unbatched (C, *size), as torch's convolutions accept
            return super().forward(x.unsqueeze(0)).squeeze(0)
        return super().forward(x)

    def prepare_input(self, x: Tensor) -> Tensor:
        if self.pad_same:
            pads = [max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0) for n, k, s, d in
                    zip(x.shape[2:], self.kernel_size, self.stride, self.dilation, strict=True)]
            self.last_padding = tuple(p for pad in reversed(pads) for p in (pad // 2, pad - pad // 2))
            return F.pad(x, self.last_padding)
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            self.last_padding = tuple(self._reversed_padding_repeated_twice)
            return F.pad(x, self.last_padding, mode=mode)
        return x


class _ConvTranspose(_Conv):
    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        """As `nn.ConvTranspose*d`: `output_size` picks the output padding for this call only."""
        if output_size is None:
            return super().forward(x)
        dims = len(self.kernel_size)
        pad = tuple(self._output_padding(x, output_size, list(self.stride), list(self.padding),
                                         list(self.kernel_size), dims, list(self.dilation)))
        op = self.op
        self.op = replace(op, output_padding=pad)  # read by the forward; backward keeps its own copy
        try:
            return super().forward(x)
        finally:
            self.op = op


class Conv1d(_Conv, nn.Conv1d):
    pass


class Conv2d(_Conv, nn.Conv2d):
    pass


class StandardizedConv2d(Conv2d):
    """timm's StdConv2d and ScaledStdConv2d (and their "Same" forms) trained by a rule. Their forward uses
    the weight standardised per output channel (times gain * scale): `.weight` is that weight, so the rule
    applies to it (B shaped like it, W's gradient flowing back through the standardisation), while the raw
    Parameter stays under the state-dict key `weight`, next to `gain`, as in timm's checkpoints."""

    own_state = ("weight", "bias", "gain")
    eps, scale = 1e-6, 1.0

    @property
    def weight(self) -> Tensor:  # type: ignore[override]  # nn.Conv2d's attribute, computed here
        w, gain = self._parameters.get("weight"), self._parameters.get("gain")
        if w is None:
            raise AttributeError("weight")  # not registered yet (nn.Conv2d's __init__ asks first)
        scale = None if gain is None else (gain * self.scale).view(-1)
        return F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, weight=scale, training=True,
                            momentum=0.0, eps=self.eps).reshape_as(w)  # timm's own computation

    @classmethod
    def from_module(cls: type[_S], m: Any, rule: Rule) -> _S:  # m: timm's StdConv2d (or Scaled, Same)
        layer = super().from_module(m, rule)
        layer.eps, layer.scale = m.eps, getattr(m, "scale", 1.0)
        if getattr(m, "gain", None) is not None:
            layer.gain = m.gain
        layer.pad_same = bool(getattr(m, "same_pad", False))  # StdConv2dSame's dynamic padding
        return layer


class Conv3d(_Conv, nn.Conv3d):
    pass


class ConvTranspose1d(_ConvTranspose, nn.ConvTranspose1d):
    pass


class ConvTranspose2d(_ConvTranspose, nn.ConvTranspose2d):
    pass


class ConvTranspose3d(_ConvTranspose, nn.ConvTranspose3d):
    pass


class LocallyConnected2d(FeedbackLayer, lc.LocallyConnected2d):
    op: LocallyConnected2dOp
    @classmethod
    def from_module(cls, m: lc.LocallyConnected2d, rule: Rule) -> LocallyConnected2d:
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    input_size=m.input_size, bias=m.bias is not None, init=m.init, device="meta")
        layer.weight, layer.bias = m.weight, m.bias
        layer.rule = rule  # the op was made by the constructor, from the same geometry
        return layer.train(m.training)


class Replacement(Protocol):
    """What `CONVERTIBLE` maps a torch layer type to: a class whose `from_module(m, rule)` makes the
    rule-trained module that replaces `m` (a `FeedbackLayer`, or attention holding some)."""

    def from_module(self, m: Any, rule: Rule, /) -> nn.Module: ...


#: torch layer type -> rule-trained counterpart; `nowt.convert` swaps these.
CONVERTIBLE: dict[type[nn.Module], Replacement] = {
    nn.Linear: Linear, NonDynamicallyQuantizableLinear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d, nn.ConvTranspose1d: ConvTranspose1d, nn.ConvTranspose2d: ConvTranspose2d,
    nn.ConvTranspose3d: ConvTranspose3d, lc.LocallyConnected2d: LocallyConnected2d,
}


_R = TypeVar("_R", bound=Replacement)


def convertible(*types: type[nn.Module]) -> Callable[[_R], _R]:
    """Class decorator: `nowt.convert` swaps each of `types` for the decorated rule-trained layer (as
    `nowt.attention.MultiheadAttention` registers itself for nn.MultiheadAttention)."""
    def add(cls: _R) -> _R:
        for t in types:
            CONVERTIBLE[t] = cls
        return cls

    return add


#: Layers converted by class path (`nowt.inventory.SAME_OP`) into a layer of their own.
VARIANTS: dict[str, Replacement] = {"standardize": StandardizedConv2d}


def feedback_layers(model: nn.Module) -> dict[str, FeedbackLayer]:
    """Every rule-trained layer of `model`, by qualified name ("" for the model itself)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FeedbackLayer)}


def feedback_rules(model: nn.Module) -> list[Rule]:
    """The distinct rules of `model`'s rule-trained layers, in layer order: the loop calls their hooks."""
    found: dict[int, Rule] = {}
    for layer in feedback_layers(model).values():
        found.setdefault(id(layer.rule), layer.rule)
    return list(found.values())
