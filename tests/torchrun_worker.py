"""`nowt train` under torchrun. With NOWT_TEST_KILL=1, rank 1 of the first attempt dies in the middle of
epoch 2 (os._exit, as a kill would): torchrun's --max-restarts then restarts every worker, and --resume
continues from the last checkpoint. With NOWT_TEST_RECORD=DIR, every rank saves to DIR/rank<RANK>.pt, per
epoch, the model's state when the epoch starts and ends and the dropout masks of its training steps."""

import os
import sys

import torch
from torch import nn

import nowt.train.loop as train

first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
if os.environ.get("NOWT_TEST_KILL") == "1" and first_attempt and os.environ.get("RANK") == "1":
    real_epoch = train.train_epoch
    epochs = {"n": 0}

    def dying_epoch(learner, loader, *args, **kwargs):
        epochs["n"] += 1
        if epochs["n"] == 2:
            batches = iter(loader)
            learner.train_step(*next(batches))  # mid-epoch
            os._exit(1)
        return real_epoch(learner, loader, *args, **kwargs)

    train.train_epoch = dying_epoch

if os.environ.get("NOWT_TEST_RECORD"):
    unrecorded_epoch = train.train_epoch
    record: list[dict] = []

    def _state(model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    def recorded_epoch(learner, loader, *args, **kwargs):
        masks: list[torch.Tensor] = []

        def keep_mask(module, inputs, output):  # a dropped unit is 0 where its input was not
            if module.training:
                masks.append((output == 0) & (inputs[0] != 0))

        start = _state(learner.model)
        hooks = [m.register_forward_hook(keep_mask) for m in learner.model.modules()
                 if isinstance(m, nn.Dropout)]
        try:
            metrics = unrecorded_epoch(learner, loader, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
        record.append({"start": start, "end": _state(learner.model), "masks": masks})
        torch.save(record, os.path.join(os.environ["NOWT_TEST_RECORD"], f"rank{os.environ['RANK']}.pt"))
        return metrics

    train.train_epoch = recorded_epoch

from nowt.cli import main  # noqa: E402

sys.exit(main())
