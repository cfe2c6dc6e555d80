"""A Hugging Face `transformers.Trainer` callback running nowt's rule hooks and logging alignment.

    model = nowt.convert(GPT2LMHeadModel(config), "wm", seed=0)
    trainer = Trainer(model, args, train_dataset=data, callbacks=[NowtCallback()])
    trainer.train()        # the mirror's warm-up at the start, its schedule after every optimizer step

Needs transformers and accelerate (what `Trainer` needs): `pip install nowt[hf]`.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.utils.data import IterableDataset

from nowt.integrations.common import RuleHooks, alignment, call_model, check_optimizer, to_device

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - exercised only without transformers
    raise ImportError("nowt.integrations.hf needs transformers (and accelerate, for its Trainer): "
                      "pip install 'nowt[hf]'") from e


class NowtCallback(TrainerCallback):
    """Runs the rules' hooks of the Trainer's (converted) model and logs their alignment.

    - At train start of a fresh run (global step 0; a resumed run skips it, its state is in the
      checkpoint): one forward pass, without gradients, of the first `per_device_train_batch_size`
      examples of the training set through the Trainer's collator (only where a rule's `begin_training`
      does anything, as `wm`'s warm-up does: it needs each layer's input shape), then each rule's
      `begin_training(model, batch)` with the global batch of one optimizer step (per device x devices x
      gradient accumulation).
    - At train start, fresh or resumed: a ValueError naming any rule parameter (`kp`'s B) that the
      Trainer's optimizer leaves out while it trains the layer's weight (an optimizer built before
      `nowt.convert`: passed as `optimizers=`, or made by `create_optimizer` or an earlier `train()`).
    - After every optimizer step: each rule's `after_step(model, state.global_step)` (the mirror schedule;
      the step count continues across a resume).
    - Every `log_every` optimizer steps (default: the Trainer's `logging_steps`; 0: never):
      `nowt/angle_mean`, `nowt/angle_min`, `nowt/angle_max` (degrees between each layer's feedback B and
      its W, `nowt.weight_angles`) and `nowt/norm_ratio_mean/min/max` (||B|| / ||W||); with `per_layer`,
      `nowt/angle/<layer>` and `nowt/norm_ratio/<layer>` too. They join the Trainer's log
      of that step (a log is made then if the Trainer would not have logged), so they are in
      `trainer.state.log_history` and the console, and reach every callback after this one. A Trainer's
      `report_to` integrations (TensorBoard, W&B) come before the callbacks you pass it: use `attach(trainer)`
      and the angles are logged with `trainer.log`, which every callback sees. `last_alignment` holds the
      latest values.
    """

    def __init__(self, log_every: int | None = None, per_layer: bool = False) -> None:
        if log_every is not None and (isinstance(log_every, bool) or log_every < 0):
            raise ValueError(f"log_every must be an int >= 0 (0: no logging) or None, got {log_every!r}")
        self.log_every, self.per_layer = log_every, per_layer
        self.trainer: Any = None  # set by attach: log through trainer.log
        self.hooks: RuleHooks | None = None
        self.began = False  # whether begin_training ran in this process
        self.last_alignment: dict[str, float] = {}
        self._pending: tuple[int, dict[str, float]] | None = None

    def on_train_begin(self, args, state, control, model: nn.Module | None = None, train_dataloader=None,
                       optimizer=None, **kwargs):
        assert model is not None  # the Trainer passes its model
        if optimizer is not None:  # one built before convert (optimizers=, create_optimizer) lacks kp's B
            check_optimizer(model, [optimizer])
        self.hooks = RuleHooks(model)
        if state.global_step > 0:
            return
        batch_size = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
        device = next(model.parameters()).device

        def forward() -> None:
            call_model(model, to_device(first_batch(train_dataloader, args.per_device_train_batch_size),
                                        device))

        self.hooks.begin(model, batch_size, forward)
        self.began = True

    def on_step_end(self, args, state, control, model: nn.Module | None = None, **kwargs):
        step = state.global_step
        assert model is not None  # the Trainer passes its model
        if self.hooks is None:  # the Trainer always calls on_train_begin first; a hand call may not
            self.hooks = RuleHooks(model)
        self.hooks.after_step(model, step)
        every = (state.logging_steps or args.logging_steps) if self.log_every is None else self.log_every
        every = math.ceil(every) if every else 0
        if every and step % every == 0:
            metrics = alignment(model, self.per_layer)
            self.last_alignment = metrics
            if metrics and self.trainer is not None:
                self.trainer.log(dict(metrics))
            elif metrics:
                self._pending = (step, metrics)
                control.should_log = True
        return control

    def on_log(self, args, state, control, logs: dict | None = None, **kwargs):
        if self._pending is None or logs is None or "loss" not in logs:  # a training log, not an eval one
            return
        step, metrics = self._pending
        self._pending = None
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == step:
            state.log_history[-1].update(metrics)


def attach(trainer, log_every: int | None = None, per_layer: bool = False) -> NowtCallback:
    """A `NowtCallback` added to `trainer` that logs through `trainer.log` (so the `report_to`
    integrations, TensorBoard or W&B, record the angles as their own entries). Returns it."""
    callback = NowtCallback(log_every, per_layer)
    callback.trainer = trainer
    trainer.add_callback(callback)
    return callback


def first_batch(dataloader, size: int) -> Any:
    """The training set's first `size` examples through the loader's collator, so the Trainer's sampler
    (and its random state) is untouched; an iterable dataset's first batch from the loader itself."""
    dataset = getattr(dataloader, "dataset", None)
    collate = getattr(dataloader, "collate_fn", None)
    if collate is not None and dataset is not None and not isinstance(dataset, IterableDataset) \
            and hasattr(dataset, "__len__") and len(dataset):
        return collate([dataset[i] for i in range(min(size, len(dataset)))])
    return next(iter(dataloader))


__all__ = ["NowtCallback", "attach", "first_batch"]
