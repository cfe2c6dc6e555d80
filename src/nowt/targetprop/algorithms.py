"""Targets and losses of target propagation (Lee et al. 2015; Bartunov et al. 2018), as plain functions.

Notation: h_0 = x, h_l = f_l(h_{l-1}) for l = 1..L (h_L the logits); g_l(h_l) approximates h_{l-1}.

- TP:      t_{l-1} = g_l(t_l)
- DTP:     t_{l-1} = h_{l-1} + g_l(t_l) - g_l(h_l)           (difference correction)
- TP and DTP start from a gradient step on the penultimate layer: t_{L-1} = h_{L-1} - alpha dL/dh_{L-1}.
- SDTP:    t_{L-1} = h_{L-1} - g_L(a_L) + g_L(a_hat_L), with a_L = softmax(h_L) the output distribution and
           a_hat_L the one-hot label (the argmin of the loss): no gradient anywhere.
- AO-SDTP: as SDTP with a_L = [softmax(h_L), z], a_hat_L = [one-hot, z], z fixed random features of h_{L-1}.
- Layer loss ||f_l(h_{l-1}) - t_l||^2 (h_{l-1} detached); the readout trains on the task loss.
- Inverse loss ||h~ - g_l(f_l(h~))||^2, h~ = h_{l-1} + eps, eps ~ N(0, sigma^2) (TP, DTP: Lee et al.'s
  noise-preserving loss, the corrupted activity is reconstructed); SDTP and AO-SDTP denoise, as Bartunov et
  al. do (their Algorithm 1, appendix 5.1): ||h_{l-1} - g_l(f_l(h~))||^2, the clean activity.

Squared errors are summed over units and averaged over the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from nowt.distributed import randn_for_shard

Function = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Algorithm:
    name: str
    difference: bool  # t_{l-1} = h_{l-1} + g(t_l) - g(h_l); plain TP uses g(t_l)
    gradient_top: bool  # the penultimate target is a gradient step (tp, dtp), else it comes through g_L
    auxiliary: bool = False  # the readout also emits fixed random features z (ao-sdtp)
    denoise: bool = False  # the inverse reconstructs the clean activity from the corrupted one (sdtp)


ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in (
    Algorithm("tp", difference=False, gradient_top=True),
    Algorithm("dtp", difference=True, gradient_top=True),
    Algorithm("sdtp", difference=True, gradient_top=False, denoise=True),
    Algorithm("ao-sdtp", difference=True, gradient_top=False, auxiliary=True, denoise=True),
)}


def get_algorithm(name: str) -> Algorithm:
    if not isinstance(name, str) or name.lower() not in ALGORITHMS:
        raise ValueError(f"unknown target-propagation algorithm {name!r}; "
                         f"choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name.lower()]


#: The options (`trainer.OPTIONS`) that only the learned inverses read.
INVERSE_OPTIONS = ("inverse_lr", "inverse_betas", "inverse_eps", "sigma")


def inverse_layers(algorithm: Algorithm, depth: int) -> list[int]:
    """The layers l with a learned inverse g_l in a network of `depth` weight layers: 2..L-1, and the readout
    L where its target comes through g_L (SDTP, AO-SDTP), not from the loss's gradient (TP, DTP)."""
    return list(range(2, depth)) + ([] if algorithm.gradient_top else [depth])


def idle_without_inverses(algorithm: Algorithm, depth: int, values: Mapping[str, Any]) -> dict[str, str]:
    """{option: why it has no effect} where `algorithm` has no inverse to learn on `depth` weight layers (TP
    and DTP on one hidden layer): the inverses' options, and the alternating schedule (`values["schedule"]`),
    whose inverse phases would train nothing."""
    if inverse_layers(algorithm, depth):
        return {}
    why = (f"{algorithm.name} on a network of one hidden layer has no inverse to learn (inverses serve "
           f"hidden layers 2 and up; the one hidden layer's target comes from the loss's gradient)")
    idle = dict.fromkeys(INVERSE_OPTIONS, why)
    if values.get("schedule") == "alternating":
        idle["schedule"] = f"{why}: every inverse phase of the alternating schedule would train nothing"
    return idle


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """||a - b||^2 per example, averaged over the batch."""
    return (a - b).pow(2).flatten(1).sum(1).mean()


def gradient_target(h: Tensor, readout: Function, y: Tensor, alpha: float) -> Tensor:
    """h - alpha dL/dh for the cross-entropy L of each example (the batch sum, so no 1/batch factor).

    Only h is differentiated: no parameter gradient is accumulated.
    """
    with torch.enable_grad():
        h = h.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(readout(h), y, reduction="sum"), h)
    return (h - alpha * grad).detach()


def propagate(g: Function, h_below: Tensor, h: Tensor, target: Tensor, difference: bool) -> Tensor:
    """The target of the layer below: h_below + g(target) - g(h) (difference) or g(target)."""
    if difference:
        return h_below + g(target) - g(h)
    return g(target)


def hidden_targets(
    hs: list[Tensor], top_target: Tensor, inverses: Mapping[int, Function], difference: bool
) -> dict[int, Tensor]:
    """{l: t_l} for the hidden layers l = 1..L-1, from t_{L-1} = `top_target` down through g_{L-1}..g_2.

    `hs` = [h_0, ..., h_{L-1}] (at least); `inverses[l]` = g_l.
    """
    top = len(hs) - 1
    if top < 1:
        return {}  # no hidden layer
    targets = {top: top_target}
    for layer in range(top, 1, -1):
        targets[layer - 1] = propagate(inverses[layer], hs[layer - 1], hs[layer], targets[layer], difference)
    return targets


def inverse_loss(
    g: Function, f: Function, h: Tensor, sigma: float, generator: torch.Generator | None,
    denoise: bool = False,
) -> Tensor:
    """||h~ - g(f(h~))||^2 (`denoise`: ||h - g(f(h~))||^2), h~ = h + N(0, sigma^2); f gets no gradient."""
    noise = randn_for_shard(h.shape, generator=generator, device=h.device, dtype=h.dtype) if sigma else 0.0
    corrupted = h.detach() + sigma * noise
    with torch.no_grad():
        out = f(corrupted)
    return squared_error(g(out), h.detach() if denoise else corrupted)
