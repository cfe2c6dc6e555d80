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


def test_evaluate_scores_what_the_run_trained_on_and_refuses_other_data(tmp_path):
    """`nowt evaluate` scored a --validation run's "train" split over its held-out examples too, and never
    compared the data with the checkpoint's fingerprint (another --data-dir gave a score without a word)."""
    import torch

    from nowt.data.registry import holdout
    from nowt.train import build_model, evaluate_run
    from nowt.train.factories import load_data

    cfg = TrainConfig(rule="fa", dataset="synthetic", hidden=(8,), epochs=1, validation=500,
                      lr_schedule="constant", out_dir=str(tmp_path))
    fit(cfg, progress=False, data_from_cfg=True)
    _, scores = evaluate_run(tmp_path, ["train"])
    data = load_data(cfg)
    (x, y), _ = holdout(data.train, 500, "--validation")
    assert len(y) == len(data.train[1]) - 500
    model = build_model(cfg, tuple(x.shape[1:]), int(torch.cat([data.train[1], data.test[1]]).max()) + 1)
    model.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["model"])
    with torch.no_grad():
        by_hand = 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())
    assert scores["train"]["accuracy"] == pytest.approx(by_hand, abs=1e-4)
    state = load_checkpoint(tmp_path / "checkpoint.pt")  # as if it had trained on other training labels
    state.pop("format")
    state["data"]["train_labels"] += 1
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    with pytest.raises(ValueError, match="trained on other data .*the training labels differ"):
        evaluate_run(tmp_path, ["test"])
