"""`nowt train` under torchrun. With NOWT_TEST_KILL=1, rank 1 of the first attempt dies in the middle of
epoch 2 (os._exit, as a kill would): torchrun's --max-restarts then restarts every worker, and --resume
continues from the last checkpoint."""

import os
import sys

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

from nowt.cli import main  # noqa: E402

sys.exit(main())
