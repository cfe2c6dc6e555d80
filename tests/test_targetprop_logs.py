"""What a target-propagation run logs per epoch beside the task loss: its inverses' mean loss (the trainer
computed it every step and the loop dropped it, so an inverse that stopped reconstructing went unseen)."""


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
