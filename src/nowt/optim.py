"""The optimizers nowt builds by name, and the one training step of a rule-trained model, for `nowt train`
and for noise pretraining alike."""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

#: name -> (optimizer class, whether it takes momentum)
OPTIMIZERS = {"sgd": (torch.optim.SGD, True), "adam": (torch.optim.Adam, False),
              "adamw": (torch.optim.AdamW, False), "rmsprop": (torch.optim.RMSprop, True)}


def make_optimizer(name: str, params: Iterable, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0, betas: tuple[float, ...] = (0.9, 0.999),
                   eps: float = 1e-8) -> torch.optim.Optimizer:
    """`name` (sgd, adam, adamw, rmsprop) over `params` (tensors or parameter groups); momentum is used by
    sgd and rmsprop only, betas by adam and adamw, eps by all but sgd."""
    if name.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    cls, uses_momentum = OPTIMIZERS[name.lower()]
    extra: dict = {"momentum": momentum} if uses_momentum else {"betas": tuple(betas)}
    if cls is not torch.optim.SGD:
        extra["eps"] = eps
    params = [_listed(p) for p in params]
    if _can_fuse(cls, params):
        # One kernel per tensor instead of four or five passes over memory: on a CPU the default SGD step
        # costs as much as an MLP's backward, and Kolen-Pollack pays it twice (W and B). The arithmetic is
        # the default's; a few elements' last bit may round differently.
        try:
            return cls(params, lr=lr, weight_decay=weight_decay, fused=True, **extra)
        except RuntimeError:  # a torch without this fused step on this device: the default one
            pass
    return cls(params, lr=lr, weight_decay=weight_decay, **extra)


def _listed(group):
    """A parameter group with its `params` as a list (it may be a generator, read once), or a tensor as is."""
    if not isinstance(group, dict):
        return group
    ps = group["params"]
    return {**group, "params": [ps] if isinstance(ps, torch.Tensor) else list(ps)}


def _can_fuse(cls: type, params: list) -> bool:
    """Whether `cls` has a fused step for every tensor in `params` (CPU or CUDA floating-point tensors)."""
    if "fused" not in inspect.signature(cls).parameters:
        return False
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    return bool(tensors) and all(
        isinstance(t, torch.Tensor) and t.is_floating_point() and t.device.type in ("cpu", "cuda")
        for t in tensors)


class HalveOnPlateau:
    """Nøkland 2016's learning-rate rule, stepped once per epoch with the epoch's training error e (a
    fraction): a running mean m <- 0.75 m + 0.25 e (from m = 1); the lr halves when e >= m, and training is
    `finished` once it has halved `max_halvings` times or m falls to 1e-4."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_halvings: int = 8):
        self.optimizer, self.max_halvings = optimizer, max_halvings
        self.mean_error, self.halvings, self.finished = 1.0, 0, False

    def step(self, train_error: float) -> None:
        self.mean_error = 0.75 * self.mean_error + 0.25 * train_error
        if self.halvings >= self.max_halvings or self.mean_error <= 1e-4:
            self.finished = True
        elif train_error >= self.mean_error:
            for group in self.optimizer.param_groups:
                group["lr"] /= 2
            self.halvings += 1

    @classmethod
    def ended(cls, train_errors: list[float], max_halvings: int = 8) -> bool:
        """Whether the rule had ended a run after epochs with these training errors (read from its log)."""
        rule = cls(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0), max_halvings)
        for error in train_errors:
            rule.step(error)
        return rule.finished

    def state_dict(self) -> dict:
        return {"mean_error": self.mean_error, "halvings": self.halvings, "finished": self.finished}

    def load_state_dict(self, state: dict) -> None:
        self.mean_error, self.halvings = state["mean_error"], state["halvings"]
        self.finished = state["finished"]


def rule_step(model: nn.Module, rules: Sequence[Any], optimizer: torch.optim.Optimizer, loss: Tensor,
              step: int) -> None:
    """One training step of a model converted by per-layer rules: the backward pass (each layer's error
    reaches it by its rule), the optimizer's step, then each rule's `after_step(model, step)` hook (weight
    mirrors: their mirror schedule). `step` counts optimizer steps from 1. `nowt.train`'s RuleLearner and
    `nowt.pretrain_noise` both train through this."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    for rule in rules:
        rule.after_step(model, step)
