"""`nowt.check_feedback_scale`: a first-step check that the rule's error reaches each layer at backprop's
scale.

Random feedback drawn at the wrong scale multiplies the error by about the ratio of B's spread to W's at
every layer it crosses: a 12-block transformer whose weights are N(0, 0.02) but whose B is drawn at
PyTorch's fan-in scale got a first gradient 1e17 times backprop's (torchvision's maxvit_t) and a NaN loss
after one step. `nowt.convert`'s default `init="match"` draws B at each W's own spread; this check finds a
layer that is still off (a fixed-scale init, a hand-set `scale`, a model whose own init is unusual) on one
batch, before a run is spent on it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from nowt.layers import feedback_layers
from nowt.metrics import backprop_mode, preserved_state

#: A layer whose gradient is this many times backprop's (or 1/this) is reported.
FACTOR = 100.0


def _pass(model: nn.Module, layers: Mapping[str, nn.Module], loss_fn: Callable[[Any, Any], Tensor], x: Any,
          y: Any) -> dict[str, float]:
    """One forward and backward; the norm of the gradient reaching each layer's output (summed over the
    layer's calls), the buffers and the random number generators left as they were."""
    sums = dict.fromkeys(layers, 0.0)

    def record(name: str) -> Callable:
        def add(g: Tensor) -> None:
            sums[name] += float(g.double().square().sum())

        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(add)
        return hook

    handles = [layer.register_forward_hook(record(name)) for name, layer in layers.items()]
    try:
        with preserved_state(model):  # the same dropout masks and batch statistics in both passes
            loss_fn(model(x), y).backward()
    finally:
        for h in handles:
            h.remove()
    return {name: math.sqrt(s) for name, s in sums.items()}


def check_feedback_scale(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    x: Any,
    y: Any,
    *,
    factor: float = FACTOR,
    warn: bool = True,
) -> dict[str, float]:
    """{name of each rule-trained layer: the norm of the gradient reaching its output under the rule, over
    backprop's}, from one forward/backward of `loss_fn(model(x), y)` each way on the same batch.

    The gradient at a layer's output is the error the layers above it send down: under the rule it crossed
    their feedback matrices, under backprop their weights, so a ratio far from 1 says the feedback's scale
    is off (the output layer's is 1). With `warn`, a warning names every layer whose ratio is above `factor`
    or below 1/`factor` (or not finite) and says what to do. Nothing of the model changes: gradients already
    accumulated, buffers (batch-norm statistics, draw counters) and the random generators are restored.
    A layer no gradient reached under backprop gives nan (inf if the rule's did); a rule's gradient that
    is not finite gives inf.
    """
    if not factor > 1:
        raise ValueError(f"factor must be > 1, got {factor}")
    layers = {n: m for n, m in feedback_layers(model).items() if m.rule.name != "bp"}
    if not layers:
        raise ValueError("check_feedback_scale: the model has no layer trained by a rule other than bp; "
                         "call nowt.convert(model, rule) first")
    params = list(model.parameters())
    saved = [p.grad for p in params]
    try:
        for p in params:
            p.grad = None
        rule = _pass(model, layers, loss_fn, x, y)
        for p in params:
            p.grad = None
        with backprop_mode(model):
            true = _pass(model, layers, loss_fn, x, y)
    finally:
        for p, g in zip(params, saved, strict=True):
            p.grad = g
    ratios = {n: _ratio(rule[n], true[n]) for n in layers}
    off = {n: r for n, r in ratios.items() if not (1 / factor <= r <= factor) and not math.isnan(r)}
    if warn and off:
        listed = ", ".join(f"{n!r} ({layers[n].rule.name}) {r:.3g}x" for n, r in list(off.items())[:5])
        more = f" and {len(off) - 5} more" if len(off) > 5 else ""
        warnings.warn(f"check_feedback_scale: the gradient reaching {listed}{more} of backprop's, over "
                      f"{factor:g}x off; the random feedback is at another scale than the weights: convert "
                      f"with init='match' (B at each weight's own spread), or set scale=", stacklevel=2)
    return ratios


def _ratio(rule: float, true: float) -> float:
    if not math.isfinite(rule):  # the rule's gradient overflowed (or is NaN): as far off as it gets
        return math.inf
    if true == 0:
        return math.nan if rule == 0 else math.inf
    return rule / true


__all__ = ["FACTOR", "check_feedback_scale"]
