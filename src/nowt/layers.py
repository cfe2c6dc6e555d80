"""Thin layers: a torch layer whose backward is decided by a rule. They subclass the torch layer
(`nn.Linear`, `nn.Conv2d`, ...), so code that checks types or reads `.weight`, `.in_features`, `.kernel_size`
keeps working."""

from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from nowt import lc
from nowt.ops import ConvOp, LinearOp, LocallyConnected2dOp
from nowt.rules import Rule


class FeedbackLayer(nn.Module):
    """Mixin for rule-trained layers: `.weight`, `.bias`, `.rule`, `.feedback` (B, the weight's shape)."""

    rule: Rule
    op: LinearOp | ConvOp | LocallyConnected2dOp
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


class _Conv(FeedbackLayer):
    """Shared by every convolution, plain or transposed, of any dimension: one `ConvOp` geometry."""

    @classmethod
    def from_module(cls, m: nn.modules.conv._ConvNd, rule: Rule) -> _Conv:
        args = (m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
        if m.transposed:  # ConvTranspose's signature: output_padding, groups, bias, dilation, padding_mode
            layer = cls(*args, m.output_padding, m.groups, m.bias is not None, m.dilation, m.padding_mode,
                        device="meta")
        else:
            layer = cls(*args, m.dilation, m.groups, m.bias is not None, m.padding_mode, device="meta")
        layer.weight, layer.bias = m.weight, m.bias
        # String paddings ("same") and non-zero padding modes are applied by an explicit pad, so the op
        # itself only ever sees symmetric integer zero padding.
        explicit = isinstance(m.padding, str) or m.padding_mode != "zeros"
        padding = (0,) * len(m.kernel_size) if explicit else tuple(m.padding)
        layer.rule = rule
        layer.op = ConvOp(tuple(m.stride), padding, tuple(m.dilation), m.groups, m.transposed,
                          tuple(m.output_padding) if m.transposed else ())
        return layer.train(m.training)

    def prepare_input(self, x: Tensor) -> Tensor:
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            return F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
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


class Conv3d(_Conv, nn.Conv3d):
    pass


class ConvTranspose1d(_ConvTranspose, nn.ConvTranspose1d):
    pass


class ConvTranspose2d(_ConvTranspose, nn.ConvTranspose2d):
    pass


class ConvTranspose3d(_ConvTranspose, nn.ConvTranspose3d):
    pass


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
    nn.Linear: Linear, NonDynamicallyQuantizableLinear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d,
    nn.Conv3d: Conv3d, nn.ConvTranspose1d: ConvTranspose1d, nn.ConvTranspose2d: ConvTranspose2d,
    nn.ConvTranspose3d: ConvTranspose3d, lc.LocallyConnected2d: LocallyConnected2d,
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
