"""A PyTorch Lightning callback running nowt's rule hooks and logging alignment.

    module = MyLightningModule(nowt.convert(net, "wm", seed=0))
    lightning.Trainer(max_epochs=5, callbacks=[NowtCallback()]).fit(module, loader)

Needs `lightning` (or the older `pytorch_lightning`): `pip install nowt[lightning]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nowt.integrations.common import RuleHooks, alignment, batch_length, call_model, check_optimizer

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        # (where both are installed, mypy sees two Callback classes; where neither is, no error to ignore)
        from pytorch_lightning import Callback  # type: ignore[assignment, unused-ignore]
    except ImportError as e:
        raise ImportError("nowt.integrations.lightning needs lightning: pip install 'nowt[lightning]'") from e


class NowtCallback(Callback):
    """Runs the rules' hooks of the LightningModule's converted layers and logs their alignment.

    - At the first training batch of a fresh run (global step 0; a resumed run skips it, its state is in
      the checkpoint): one forward pass of that batch, without gradients, through `forward(module, batch)`
      (default: `module(**batch)` for a mapping, `module(batch[0])` for an (inputs, targets) sequence,
      `module(batch)` otherwise; only where a rule's `begin_training` does anything, as `wm`'s warm-up
      does), then each rule's `begin_training(module, batch_size)` with the global batch of one optimizer
      step (`batch_size`, default: the batch's length x devices x `accumulate_grad_batches`).
    - At train start, fresh or resumed: a ValueError naming any rule parameter (`kp`'s B) that the
      Trainer's optimizers leave out while they train the layer's weight (built before `nowt.convert`).
    - After every optimizer step (`trainer.global_step` advancing; under gradient accumulation, not after
      every batch): each rule's `after_step(module, step)` (the mirror schedule).
    - Every `log_every` optimizer steps (default: the Trainer's `log_every_n_steps`; 0: never), on the
      global rank 0: `nowt/angle_mean`, `nowt/angle_min`, `nowt/angle_max` (degrees between each layer's
      feedback B and its W) and `nowt/norm_ratio_mean/min/max` (||B|| / ||W||; with `per_layer`,
      `nowt/angle/<layer>` and `nowt/norm_ratio/<layer>` too) to every logger of the Trainer
      (`logger.log_metrics(metrics, step)`). `last_alignment` holds the latest values.
    """

    def __init__(self, log_every: int | None = None, per_layer: bool = False, batch_size: int | None = None,
                 forward: Callable[[nn.Module, Any], Any] | None = None) -> None:
        if log_every is not None and (isinstance(log_every, bool) or log_every < 0):
            raise ValueError(f"log_every must be an int >= 0 (0: no logging) or None, got {log_every!r}")
        self.log_every, self.per_layer, self.batch_size = log_every, per_layer, batch_size
        self.forward = forward or call_model
        self.hooks: RuleHooks | None = None
        self.began = False  # whether begin_training ran in this process
        self.step = 0  # the optimizer steps whose after_step hooks have run
        self._fresh = False  # set at train start: whether begin_training is still to run
        self.last_alignment: dict[str, float] = {}

    def on_train_start(self, trainer, pl_module: nn.Module) -> None:
        check_optimizer(pl_module, trainer.optimizers)  # one built before convert lacks kp's B
        self.hooks = RuleHooks(pl_module)
        self.step = trainer.global_step
        self._fresh = trainer.global_step == 0

    def on_train_batch_start(self, trainer, pl_module: nn.Module, batch: Any, batch_idx: int) -> None:
        if not self._fresh:
            return
        self._fresh = False
        assert self.hooks is not None  # made by on_train_start
        size = self.batch_size or (batch_length(batch) * trainer.world_size * trainer.accumulate_grad_batches)
        self.hooks.begin(pl_module, size, lambda: self.forward(pl_module, batch))
        self.began = True

    def on_train_batch_end(self, trainer, pl_module: nn.Module, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        every = trainer.log_every_n_steps if self.log_every is None else self.log_every
        assert self.hooks is not None  # made by on_train_start
        while self.step < trainer.global_step:
            self.step += 1
            self.hooks.after_step(pl_module, self.step)
            if every and self.step % every == 0:
                self.last_alignment = alignment(pl_module, self.per_layer)
                if self.last_alignment and trainer.is_global_zero:
                    for logger in trainer.loggers:
                        logger.log_metrics(dict(self.last_alignment), step=self.step)


__all__ = ["NowtCallback"]
