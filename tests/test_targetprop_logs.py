"""What a target-propagation run logs per epoch beside the task loss: its inverses' mean loss (the trainer
computed it every step and the loop dropped it, so an inverse that stopped reconstructing went unseen), and
on the probe batch each layer's update angle against backprop and each inverse's reconstruction error."""


import pytest
from conftest import teacher_task

from nowt.train import TrainConfig, fit


@pytest.mark.parametrize("schedule", ["parallel", "alternating"])
def test_each_epoch_logs_the_mean_inverse_loss_of_the_steps_that_trained_the_inverses(schedule, monkeypatch):
    from nowt.targetprop import TargetPropTrainer

    steps = []
    step = TargetPropTrainer.train_step

    def recorded(self, x, y, *args, **kwargs):
        record = step(self, x, y, *args, **kwargs)
        steps.append((self.epoch, record["inverse_loss"], len(y)))
        return record
    monkeypatch.setattr(TargetPropTrainer, "train_step", recorded)
    train, test = teacher_task()
    cfg = TrainConfig(rule="dtp", hidden=(16, 16), activation="tanh", optimizer="adam", lr=1e-3, epochs=3,
                      batch_size=50, lr_schedule="constant", schedule=schedule)
    history = fit(cfg, train, test, progress=False)
    # alternating: the inverses train in epochs 1 and 3 alone, the forward weights in epoch 2
    trained = [0, 1, 2] if schedule == "parallel" else [0, 2]
    assert [i for i, r in enumerate(history) if "train_inverse_loss" in r] == trained
    for i in trained:  # the batch-weighted mean of the trainer's own per-step inverse losses
        logged = [(loss, n) for epoch, loss, n in steps if epoch == i]
        mean = sum(loss * n for loss, n in logged) / sum(n for _, n in logged)
        assert history[i]["train_inverse_loss"] == pytest.approx(mean, rel=1e-12) and mean > 0
    assert "train_inverse_loss" not in fit(TrainConfig(rule="fa", hidden=(8,), epochs=1), train, test,
                                           progress=False)[0]


def test_each_epoch_logs_update_angles_and_reconstruction_errors_without_changing_the_run(monkeypatch):
    from nowt.targetprop import TargetPropTrainer
    from nowt.train.learners import WholeNetworkLearner

    train, test = teacher_task()
    cfg = TrainConfig(rule="dtp", hidden=(16, 16), activation="tanh", optimizer="adam", lr=1e-3, epochs=2,
                      batch_size=50, lr_schedule="constant")
    seen = []

    def measured(self, x, y):
        out = TargetPropTrainer.measure(self.inner, x, y)
        seen.append((self.inner.update_angles(x, y), self.inner.reconstruction_errors(x)))
        return {"weight_angles": {}, **out}
    monkeypatch.setattr(WholeNetworkLearner, "measure", measured)
    history = fit(cfg, train, test, progress=False)
    layers = ["1", "3", "5"]  # the mlp's Linear layers; DTP inverts layers 2..L-1 (here the middle one)
    for record, (angles, errors) in zip(history, seen, strict=True):
        assert list(record["update_angles"]) == layers and record["update_angles"] == angles
        assert record["update_angles"]["5"] == 0.0  # the readout learns from the task loss itself
        assert all(0 < record["update_angles"][name] < 180 for name in layers[:2])
        assert list(record["reconstruction_errors"]) == ["3"] and record["reconstruction_errors"] == errors
        assert record["weight_angles"] == {}
    assert seen[0][1] != seen[1][1]  # measured anew each epoch, after that epoch's training

    # measuring draws nothing and changes nothing: the same run with measuring switched off trains the same
    monkeypatch.setattr(WholeNetworkLearner, "measure", lambda self, x, y: {})
    unmeasured = fit(cfg, train, test, progress=False)
    for a, b in zip(history, unmeasured, strict=True):
        assert (a["train_loss"], a["test_loss"]) == (b["train_loss"], b["test_loss"])
