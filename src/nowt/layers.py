"""Thin layers: a torch layer whose backward is decided by a rule. They subclass `nn.Linear` and `nn.Conv2d`,
so code that checks types or reads `.weight`, `.in_features`, `.kernel_size` keeps working."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from nowt import lc
from nowt.ops import Conv2dOp, LinearOp, LocallyConnected2dOp
from nowt.rules import Rule


class FeedbackLayer(nn.Module):
    """Mixin for rule-trained layers: `.weight`, `.bias`, `.rule`, `.feedback` (B, the weight's shape)."""

    rule: Rule
    op: LinearOp | Conv2dOp | LocallyConnected2dOp
    last_input_shape = None  # the most recent input's shape (weight mirrors drive noise of this shape)
    backprop_only = False  # set by `nowt.metrics.backprop_mode` to compute the true gradient

    def prepare_input(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.prepare_input(x)
        self.last_input_shape = x.shape
        if self.backprop_only:
            return self.op.forward(x, self.weight, self.bias)
        return self.rule.forward(self, x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "feedback":  # no `feedback` registered: the rule says what B is (W for backprop,
                return self.rule.materialized_feedback(self)  # DFA's shared and seeded B materialised)
            raise

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"


class Linear(FeedbackLayer, nn.Linear):
    @classmethod
    def from_module(cls, m: nn.Linear, rule: Rule) -> Linear:
        layer = cls(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        layer.weight, layer.bias = m.weight, m.bias
        layer.rule, layer.op = rule, LinearOp()
        return layer.train(m.training)


class Conv2d(FeedbackLayer, nn.Conv2d):
    @classmethod
    def from_module(cls, m: nn.Conv2d, rule: Rule) -> Conv2d:
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                    m.bias is not None, m.padding_mode, device="meta")
        layer.weight, layer.bias = m.weight, m.bias
        # String paddings ("same") and non-zero padding modes are applied by an explicit pad, so the op
        # itself only ever sees symmetric integer zero padding.
        explicit = isinstance(m.padding, str) or m.padding_mode != "zeros"
        padding = (0, 0) if explicit else tuple(m.padding)
        layer.rule, layer.op = rule, Conv2dOp(tuple(m.stride), padding, tuple(m.dilation), m.groups)
        return layer.train(m.training)

    def prepare_input(self, x: Tensor) -> Tensor:
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            return F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
        return x


class LocallyConnected2d(FeedbackLayer, lc.LocallyConnected2d):
    @classmethod
    def from_module(cls, m: lc.LocallyConnected2d, rule: Rule) -> LocallyConnected2d:
        layer = cls(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                    input_size=m.input_size, bias=m.bias is not None, init=m.init, device="meta")
        layer.weight, layer.bias = m.weight, m.bias
        layer.rule = rule  # the op was made by the constructor, from the same geometry
        return layer.train(m.training)


#: torch layer type -> rule-trained counterpart; `nowt.convert` swaps these.
CONVERTIBLE: dict[type[nn.Module], type[FeedbackLayer]] = {
    nn.Linear: Linear, nn.Conv2d: Conv2d, lc.LocallyConnected2d: LocallyConnected2d,
}


def feedback_layers(model: nn.Module) -> dict[str, FeedbackLayer]:
    """Every rule-trained layer of `model`, by qualified name ("" for the model itself)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FeedbackLayer)}


def feedback_rules(model: nn.Module) -> list[Rule]:
    """The distinct rules of `model`'s rule-trained layers, in layer order: the loop calls their hooks."""
    found: dict[int, Rule] = {}
    for layer in feedback_layers(model).values():
        found.setdefault(id(layer.rule), layer.rule)
    return list(found.values())
