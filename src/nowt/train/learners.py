"""Learners: what one training batch does. The loop (`nowt.train.loop`) is the same for every rule.

`RuleLearner` serves every per-layer rule and DFA: the rule acts inside autograd, so a step is the usual
forward, backward and optimizer step, followed by each rule's `after_step` hook (the weight mirror's mirror
steps). A whole-network rule (target propagation) brings its own learner through its rule class, which
`WholeNetworkLearner` wraps. Which one trains a rule is its `kinds.learner_kind`, decided there once; what
follows from it (convert the network? measure feedback? take --optimizer?) is asked of the learner's `kind`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from nowt import distributed
from nowt.layers import feedback_layers, feedback_rules
from nowt.metrics import shape_pass, update_angles, weight_angles, weight_norm_ratios
from nowt.optim import HalveOnPlateau, make_optimizer, rule_step
from nowt.rules import WholeNetworkRule, rule_class
from nowt.train.config import FIELDS, TrainConfig, check_optimizer_fields, flag_name, is_default
from nowt.train.factories import (
    make_loss,
    make_scheduler,
    parameter_groups,
    rule_options,
    rules_declaring,
    sized,
)
from nowt.train.kinds import PER_LAYER, WHOLE_NETWORK, LearnerKind, learner_kind


class Learner(Protocol):
    """What the loop needs from whatever trains the network one batch at a time."""

    kind: LearnerKind  # what the loop asks of it (does it measure feedback layers?), set by its class
    model: nn.Module
    @property
    def finished(self) -> bool:
        """The schedule has ended the run before its last epoch."""
        ...

    def begin_training(self, first_batch: Tensor | None = None) -> None:
        """Once, before the first step of a fresh (not resumed) run; `first_batch` is shown to the model."""
        ...

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        """{"loss": the batch's mean loss (a 0-dim tensor or a float), and "output" (logits before the
        update) or "accuracy" (% of the batch right before the update)}. A tensor loss stays on the device:
        the loop reads it once per logging interval, not once per step."""
        ...

    def end_epoch(self, train_metrics: dict[str, float]) -> None: ...
    def measure(self, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
        """The epoch's diagnostics on the probe batch (x, y), {metric: {layer: value}}; nothing is changed."""
        ...

    def lr(self) -> float: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class RuleLearner:
    """Per-layer rules and DFA: forward, backward through the rule, optimizer step, the rules' after-step
    hooks. The scheduler's step count is checkpointed, so a resumed run calls the hooks on the same steps."""

    kind = PER_LAYER

    def __init__(self, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
        self.model, self.cfg, self.loss_fn = model, cfg, make_loss(cfg.loss)
        self.net = distributed.wrap(model, torch.device(cfg.device))  # DDP under torchrun, else the model
        if cfg.amp not in ("off", "bf16"):
            raise ValueError(f"unknown amp {cfg.amp!r}; choose off or bf16")
        self.autocast: dict[str, Any] = dict(device_type=torch.device(cfg.device).type, dtype=torch.bfloat16,
                             enabled=cfg.amp == "bf16")
        self.channels_last = cfg.channels_last
        groups = parameter_groups(model, cfg.lr, cfg.bias_lr_scale)
        self.optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay,
                                        cfg.adam_betas, cfg.adam_eps)
        self.scheduler = make_scheduler(cfg.lr_schedule, self.optimizer, cfg.epochs * steps_per_epoch,
                                        [e * steps_per_epoch for e in cfg.lr_milestones])
        self.steps = 0  # optimizer steps taken, for the rules' after-step hooks
        self.rules = feedback_rules(model)
        beyond = [e for e in cfg.lr_milestones if e >= cfg.epochs] if cfg.lr_schedule == "step" else []
        if beyond:  # not refused: a run lengthened later (--resume with more --epochs) may reach them
            warnings.warn(f"--lr-milestones {','.join(map(str, beyond))}: at or past --epochs {cfg.epochs}, "
                          f"never reached in this run", RuntimeWarning, stacklevel=2)
        if not cfg.weight_decay:
            for why in {r.needs_weight_decay for r in self.rules if r.needs_weight_decay}:
                warnings.warn(f"{why}: --weight-decay is 0", RuntimeWarning, stacklevel=2)

    def begin_training(self, first_batch: Tensor | None = None) -> None:
        """Once, before the first step of a fresh run: the rules' hook, after the model has seen
        `first_batch` (where given) so that rules know each layer's input shape."""
        if first_batch is not None:
            show_one_batch(self.model, first_batch)
        with sized(f"before training (the weight mirror's warm-up: --mirror-warmup-batch "
                   f"{self.cfg.mirror_warmup_batch})"):
            for rule in self.rules:
                rule.begin_training(self.model, self.cfg.batch_size)

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        count = len(y)
        if count == 0:  # under torchrun, a global batch smaller than the world: a stand-in weighing nothing
            x, y = x.new_zeros(1, *x.shape[1:]), y.new_zeros(1)  # (DDP needs every rank's backward)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**self.autocast):
            out = self.net(x)
            loss = self.loss_fn(out.float(), y)
        # Every rank sees the global batch's mean loss, so all stop together on a NaN anywhere. The step is
        # taken without reading the loss (no host sync): the loop checks finiteness before any checkpoint.
        loss, mean_loss = distributed.weigh_shard(loss, count)
        self.steps += 1
        rule_step(self.model, self.rules, self.optimizer, loss, self.steps)
        if not isinstance(self.scheduler, HalveOnPlateau):  # after the hooks, which read no optimizer lr
            self.scheduler.step()
        return {"loss": mean_loss, "output": out.detach()[:count]}

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        """The plateau schedule judges the epoch's training error (target propagation switches phases
        here)."""
        if isinstance(self.scheduler, HalveOnPlateau):  # the one schedule stepped per epoch
            self.scheduler.step(1.0 - train_metrics["train_accuracy"] / 100)

    def measure(self, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
        """{"weight_angles": B against W, "update_angles": the rule's update against backprop's,
        "weight_norm_ratios": ||B|| / ||W||} per converted layer (empty where the model has none: a plain
        model under bp). Both updates are computed as a training step computes them: under --amp bf16, in
        bf16."""
        if not feedback_layers(self.model):
            return {"weight_angles": {}, "update_angles": {}, "weight_norm_ratios": {}}
        with torch.autocast(**self.autocast):
            updates = update_angles(self.model, lambda out, y: self.loss_fn(out.float(), y), x, y)
        return {"weight_angles": weight_angles(self.model), "update_angles": updates,
                "weight_norm_ratios": weight_norm_ratios(self.model)}

    @property
    def finished(self) -> bool:
        """True when the schedule has ended the run before its last epoch."""
        return getattr(self.scheduler, "finished", False)

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        # checkpoints from before "steps" was kept counted steps in the (per-batch) scheduler
        self.steps = state.get("steps", state["scheduler"].get("last_epoch", 0))


def show_one_batch(model: nn.Module, x: Tensor) -> None:
    """One forward pass, so that rules see each layer's input shape (`shape_pass`: no dropout or brSF draw,
    no batch-norm statistics from this (test) batch)."""
    with shape_pass(model):
        model(x)


#: What a whole-network rule (target propagation) decides itself, by TrainConfig field: the values it
#: accepts besides the field's default (left alone, a field asks for nothing). Any other value is refused,
#: never ignored. It trains with Adam (--adam-betas, --adam-eps) at a constant --lr on layer-local losses.
WHOLE_NETWORK_FIXED: dict[str, tuple] = {
    "optimizer": ("adam",), "lr_schedule": ("constant",), "lr_milestones": (), "momentum": (),
    "bias_lr_scale": (), "weight_decay": (), "loss": (), "amp": (), "channels_last": (),
}


def check_whole_network_fields(cfg: TrainConfig, names: Iterable[str]) -> None:
    """Refuses those of the fields `names` that a whole-network rule decides itself (WHOLE_NETWORK_FIXED)
    at a value it does not take."""
    refused = [f"{flag_name(FIELDS[name])} {_shown(getattr(cfg, name))}" for name in names
               if name in WHOLE_NETWORK_FIXED and getattr(cfg, name) not in WHOLE_NETWORK_FIXED[name]]
    if refused:
        raise ValueError(f"rule {cfg.rule!r} (target propagation) does not support {', '.join(refused)}; "
                         "it trains with Adam at a constant --lr on its own layer-local losses")


def check_flags_apply(cfg: TrainConfig, flags: dict[str, Any]) -> None:
    """Fields given as command-line flags (name -> the value given) must apply to the run even at their
    default values (a TrainConfig alone cannot tell a default from a default asked for): a rule option
    `cfg.rule` does not declare, one the rule's other options leave idle (`Rule.idle_options`: --mirror-anneal
    beside --mirror-lr), an optimizer setting the optimizer does not read (--momentum with adam), or an
    option target propagation decides itself (`--lr-schedule cosine`, which `TrainConfig.validate` would
    otherwise have replaced by what it runs), is refused."""
    rule = rule_class(cfg.rule)
    declared = rule.options
    for name in sorted(flags):
        if FIELDS[name].metadata.get("rule_option") and name not in declared:
            raise ValueError(f"{flag_name(FIELDS[name])} applies only to: "
                             f"{', '.join(rules_declaring(name))} (not {cfg.rule!r})")
    values = rule_options(cfg)
    # target propagation's inverses depend on the network's depth, known before it is built for the mlp
    idle = (rule.idle_options(values, depth=len(cfg.hidden) + 1)
            if issubclass(rule, WholeNetworkRule) and cfg.model == "mlp" else rule.idle_options(values))
    for name in sorted(set(flags) & set(idle)):
        raise ValueError(f"{flag_name(FIELDS[name])} has no effect: {idle[name]}")
    check_optimizer_fields(cfg, flags)
    if learner_kind(cfg.rule) is WHOLE_NETWORK:
        asked = replace(cfg, **{n: flags[n] for n in ("optimizer", "lr_schedule") if n in flags})
        check_whole_network_fields(asked, sorted(flags))


class WholeNetworkLearner:
    """A whole-network rule (target propagation) through the learner its rule class builds
    (`WholeNetworkRule.learner`): the plain network, trained with Adam at a constant --lr on the rule's own
    layer-local losses, so the options in WHOLE_NETWORK_FIXED are refused. Any other attribute
    (`forward_optimizer`, `sigma`, ...) is that learner's."""

    kind = WHOLE_NETWORK
    finished = False  # a constant lr: only --epochs and --patience end the run

    def __init__(self, model: nn.Module, cfg: TrainConfig, steps_per_epoch: int):
        check_whole_network_fields(cfg, [name for name in WHOLE_NETWORK_FIXED
                                         if not is_default(FIELDS[name], getattr(cfg, name))])
        self.cfg = cfg
        rule = rule_class(cfg.rule)
        assert issubclass(rule, WholeNetworkRule)  # the whole-network kind's (`learner_kind`)
        self.inner = rule.learner(model, lr=cfg.lr, seed=cfg.seed, betas=cfg.adam_betas,
                                                  eps=cfg.adam_eps, **rule_options(cfg))
        self.model = self.inner.model

    def begin_training(self, first_batch: Tensor | None = None) -> None:
        """Nothing to prepare: the rule's learner starts at its first step."""

    def train_step(self, x: Tensor, y: Tensor) -> dict[str, Any]:
        return self.inner.train_step(x, y)

    def end_epoch(self, train_metrics: dict[str, float]) -> None:
        self.inner.end_epoch(train_metrics)

    def measure(self, x: Tensor, y: Tensor) -> dict[str, dict[str, float]]:
        """The rule learner's own diagnostics (`WholeNetworkRule.learner`'s `measure`: for target
        propagation, update angles against backprop and the inverses' reconstruction errors)."""
        return {"weight_angles": {}, **self.inner.measure(x, y)}

    def lr(self) -> float:
        return self.cfg.lr

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)


#: The learner class of each kind.
LEARNERS: dict[LearnerKind, type[RuleLearner] | type[WholeNetworkLearner]] = {
    cls.kind: cls for cls in (RuleLearner, WholeNetworkLearner)}


def make_learner(cfg: TrainConfig, model: nn.Module, steps_per_epoch: int,
                 kind: LearnerKind | None = None) -> Learner:
    """The learner of `kind` (by default `learner_kind(cfg.rule)`) for `model`, with `steps_per_epoch` for
    its schedule."""
    return LEARNERS[kind or learner_kind(cfg.rule)](model, cfg, steps_per_epoch)


def _shown(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
