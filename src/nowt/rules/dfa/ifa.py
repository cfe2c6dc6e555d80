"""Indirect feedback alignment (Nøkland 2016), for `nn.Sequential` MLPs: Linear layers separated by
elementwise activations.

The error reaches the first hidden layer directly, `da_1 = (B e) * f'(a_1)`, and the others through the
forward weights, `da_k = (W_k da_{k-1}) * f'(a_k)`; the output layer learns from e. In backward the second
layer's input gets `B e` and layer k+1's input gets `W_k da_{k-1}` (f' is applied by autograd through the
activation as usual). `da_{k-1}` is formed once per backward by forward-mode differentiation of the
activations at their saved inputs, so no nested backward runs. Only the second layer has a `.feedback`;
hidden updates use upstream forward weights only, never downstream ones. Start ifa from non-zero weights:
with W = 0 no error reaches layers 2 and up.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from nowt.ops import eager_when_compiled
from nowt.rules.base import LayerLike, RuleLayer, is_rule_layer
from nowt.rules.dfa.capture import Pass
from nowt.rules.dfa.rule import DirectFeedback

#: Modules allowed between the Linear layers of an `ifa` MLP: elementwise, deterministic.
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Softplus, nn.Hardtanh,
               nn.Identity)


class IndirectPass(Pass):
    """A DFA pass that also keeps, per layer index, the output, the segment of activations after it and the
    weight, for the forward sweep of the error from the first hidden layer up."""

    def __init__(self, rule: IndirectFeedback) -> None:
        super().__init__(rule)
        self.outputs: dict[int, Tensor] = {}
        self.segments: dict[int, Callable[[Tensor], Tensor]] = {}
        self.weights: dict[int, Tensor] = {}
        self._grads: dict[int, Tensor] | None = None

    def input_grad(self, slot: int) -> Tensor | None:
        return self.sweep()[slot] if slot >= 2 else super().input_grad(slot)

    def sweep(self) -> dict[int, Tensor]:
        """Gradients for the inputs of layers 2, 3, ...: t_{k+1} = W_k (f'(a_{k-1}) * t_k), t_1 = B e."""
        if self._grads is None:
            project = self.projections[1]
            assert project is not None and self.error is not None  # the first hidden layer's B; e recorded
            grads = {1: project(self.error)}
            for i in sorted(self.outputs):
                with fwAD.dual_level():
                    a = fwAD.make_dual(self.outputs[i], grads[i + 1].view_as(self.outputs[i]))
                    delta = fwAD.unpack_dual(self.segments[i](a)).tangent
                grads[i + 2] = delta @ self.weights[i + 1].t().to(delta.dtype)
            self._grads = grads
        return self._grads


class IndirectFeedback(DirectFeedback):
    name = "ifa"
    #: Converts only an `nn.Sequential` MLP (Linear layers with elementwise activations between them);
    #: `setup_model` refuses any other model. Tests ask this rather than name the rule.
    mlp_only = True

    # An MLP's error sweep through its forward weights: no blocks, no sequences (dfa's options for those).
    options = {k: v for k, v in DirectFeedback.options.items() if k not in ("blocks", "position_feedback")}

    def setup_model(self, model: nn.Module) -> None:
        mods = list(model) if isinstance(model, nn.Sequential) else []
        at = [i for i, m in enumerate(mods) if getattr(m, "rule", None) is self]
        if len(at) < 2 or any(not isinstance(mods[i], nn.Linear) for i in at):
            raise ValueError("ifa supports nn.Sequential MLPs with at least two nn.Linear layers (converted "
                             "by ifa); use dfa for other models")
        for i, j in zip(at, at[1:], strict=False):
            odd = [type(m).__name__ for m in mods[i + 1:j] if not isinstance(m, ELEMENTWISE)]
            if odd:
                raise ValueError(f"ifa needs elementwise activations between its Linear layers; got {odd}")
        for index, (i, j) in enumerate(zip(at, at[1:] + [len(mods)], strict=True)):
            layer = mods[i]
            assert is_rule_layer(layer)  # converted by this rule (`at`)
            layer.ifa_index = index
            layer.ifa_segment = nn.Sequential(*mods[i + 1:j]) if index < len(at) - 2 else None
        super().setup_model(model)

    def new_pass(self) -> IndirectPass:
        return IndirectPass(self)

    @eager_when_compiled
    def forward(self, layer: RuleLayer, x: Tensor) -> Tensor:
        out = super().forward(layer, x)
        pass_ = layer.dfa_context.current
        if pass_ is not None and layer.ifa_segment is not None and out.requires_grad:
            # Saved for the forward sweep of the error; a copy, since activations may work in place.
            pass_.outputs[layer.ifa_index] = out.detach().clone()
            pass_.segments[layer.ifa_index] = layer.ifa_segment
        if pass_ is not None:
            pass_.weights[layer.ifa_index] = layer.weight  # read in backward: upstream weights only
        return out

    def has_feedback(self, layer: LayerLike) -> bool:
        """Only the first hidden layer (the second layer's input) gets `B e`."""
        return bool(layer.ifa_index == 1)
