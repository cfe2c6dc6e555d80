"""nowt.integrations.lightning: the PyTorch Lightning callback, with the real Trainer on a tiny MLP.

Lightning is NOT in the dev extra (CI stays light: it pulls aiohttp, torchmetrics and more), so CI skips
this module; install it (`pip install nowt[lightning]`, which leaves torch as it is) to run it. Checked here
with lightning 2.6.6 on torch 2.13 CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nowt

pl = pytest.importorskip("lightning.pytorch")
from nowt.integrations.lightning import NowtCallback  # noqa: E402

STEPS, BATCH = 6, 8


class Classifier(pl.LightningModule):
    def __init__(self, rule: str, **options) -> None:
        super().__init__()
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))
        self.net = nowt.convert(net, rule, seed=0, **options)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Recorder(pl.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    name, version = "recorder", 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


def fit(module, callbacks, **trainer) -> Recorder:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(128, 20, generator=g), torch.randint(0, 4, (128,), generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    logger = Recorder()
    pl.Trainer(max_steps=STEPS, accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks, **trainer).fit(
        module, torch.utils.data.DataLoader(data, batch_size=BATCH))
    return logger


def mean_angle(model) -> float:
    angles = nowt.weight_angles(model).values()
    return sum(angles) / len(angles)


def test_the_mirror_runs_once_per_optimizer_step_and_aligns_b():
    module = Classifier("wm", mirror_every=1)
    start = mean_angle(module)
    callback = NowtCallback()
    fit(module, [callback], accumulate_grad_batches=2)
    layer = module.net[2]
    assert callback.began and int(layer.mirror_batch_size) == BATCH * 2
    assert int(layer.mirror_count) == STEPS  # after each optimizer step, not each of the 12 batches
    assert start > 60 and mean_angle(module) < 30, (start, mean_angle(module))
    plain = Classifier("wm", mirror_every=1)
    fit(plain, [])
    assert mean_angle(plain) > 60 and int(plain.net[2].mirror_count) == 0


def test_alignment_goes_to_the_trainer_s_loggers():
    module = Classifier("fa")
    callback = NowtCallback(log_every=2, per_layer=True)
    logger = fit(module, [callback])
    logged = [(step, m) for step, m in logger.metrics if "nowt/angle_mean" in m]
    assert [step for step, _ in logged] == [2, 4, 6]
    assert logged[-1][1]["nowt/angle/net.2"] == pytest.approx(nowt.weight_angles(module)["net.2"])
    assert 0 < callback.last_alignment["nowt/angle_min"] <= callback.last_alignment["nowt/angle_max"]
    assert logged[-1][1]["nowt/norm_ratio/net.2"] == pytest.approx(nowt.weight_norm_ratios(module)["net.2"])


def test_a_resumed_run_skips_the_start_hook_and_a_custom_forward_is_used():
    seen = []
    module = Classifier("wm")
    callback = NowtCallback(forward=lambda m, batch: seen.append(batch[0].shape) or m(batch[0]), batch_size=5)
    fit(module, [callback])
    assert seen == [torch.Size((BATCH, 20))] and int(module.net[0].mirror_batch_size) == 5
    callback = NowtCallback()

    class Resumed:
        global_step = 3
        optimizers = (torch.optim.SGD(module.parameters(), lr=0.05),)

    callback.on_train_start(Resumed(), module)
    callback.on_train_batch_start(Resumed(), module, None, 0)
    assert not callback.began and callback.step == 3


def test_an_optimizer_built_before_convert_is_refused():
    """It trains W but not kp's B, which would stay as drawn."""

    class Early(Classifier):
        def __init__(self) -> None:
            pl.LightningModule.__init__(self)
            torch.manual_seed(0)
            net = nn.Sequential(nn.Linear(20, 32), nn.Tanh(), nn.Linear(32, 4))
            self.early = list(net.parameters())
            self.net = nowt.convert(net, "kp", seed=0)

        def configure_optimizers(self):
            return torch.optim.SGD(self.early, lr=0.05, weight_decay=1e-3)

    with pytest.raises(ValueError, match=r"'net.0.feedback', 'net.2.feedback'.*kp's B"):
        fit(Early(), [NowtCallback()])
    module = Classifier("kp")  # its optimizer is built from self.parameters() after convert
    drawn = module.net[0].feedback.detach().clone()
    fit(module, [NowtCallback()])
    assert not torch.equal(drawn, module.net[0].feedback)
