"""Resuming refuses other data than the run trained on: the checkpoint's data fingerprint."""

import pytest
from conftest import teacher_task

from nowt.checkpoint import load_checkpoint, save_checkpoint
from nowt.train import TrainConfig, fit


def test_a_run_resumed_on_other_training_data_is_refused(tmp_path):
    """The data fingerprint a checkpoint keeps looked at the test set alone (its size and its first 256
    examples) and at the training set's size: a resume pointed at other training examples of the same count
    (another --data-dir whose training files differ, a folder whose labels were re-sorted) went on without
    a word. It now keeps a checksum of the training labels in order and the sum of the first training
    inputs; a checkpoint from before them is still checked on the rest."""
    (x, y), test = teacher_task(seed=0)
    (other_x, _), _ = teacher_task(seed=1)
    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=1, batch_size=100, lr_schedule="constant",
                      out_dir=str(tmp_path))
    fit(cfg, (x, y), test, progress=False)
    cfg.epochs = 2
    with pytest.raises(ValueError, match=r"trained on other data .*; the training inputs differ\): pass its "
                                         r"own --data-dir"):
        fit(cfg, (other_x, y), test, resume=True, progress=False)
    i = int((y[1:] != y[:-1]).nonzero()[0])  # two neighbours of different classes trade labels
    swapped = y.clone()
    swapped[[i, i + 1]] = y[[i + 1, i]]
    with pytest.raises(ValueError, match=r"the training labels differ"):
        fit(cfg, (x, swapped), test, resume=True, progress=False)
    # a checkpoint from before the training set's parts: checked on the test set's and the sizes alone
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    state.pop("format")
    state["data"] = {k: v for k, v in state["data"].items() if not k.startswith("train_")}
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert len(fit(cfg, (x, y), test, resume=True, progress=False)) == 2
