"""The trainer and CLI: a killed run resumes to the numbers of an unbroken one; checkpoints are atomic."""

import json
import math

import pytest
import torch
from conftest import per_layer_rules, teacher_task

import nowt
import nowt.train as train_mod
import nowt.train.loop as loop_mod
from nowt.checkpoint import load_checkpoint, save_checkpoint
from nowt.cli import main
from nowt.rules import rule_class
from nowt.train import TrainConfig, fit


@pytest.mark.parametrize("rule", ["fa", "wm", "brsf"])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch, rule):
    train, test = teacher_task()
    cfg = dict(rule=rule, hidden=(32,), epochs=3, batch_size=50, lr=0.05)
    unbroken = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "a")), train, test, progress=False)

    calls = {"n": 0}
    real_evaluate = loop_mod.evaluate

    def dies_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process is killed after epoch 1's checkpoint
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "evaluate", dies_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**cfg, out_dir=str(tmp_path / "b")), train, test, progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(loop_mod, "evaluate", real_evaluate)
    resumed = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "b")), train, test, resume=True, progress=False)
    drop = ("seconds",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == \
           [{k: v for k, v in r.items() if k not in drop} for r in unbroken]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_training_learns_a_teacher_task_with_every_rule():
    train, test = teacher_task()
    for rule in per_layer_rules():
        hist = fit(TrainConfig(rule=rule, hidden=(64,), epochs=4, batch_size=25, lr=0.05), train, test,
                   progress=False)
        assert hist[-1]["test_accuracy"] > 80, (rule, hist[-1])


def test_resume_refuses_corrupt_foreign_or_mismatched_checkpoints(tmp_path):
    train, test = teacher_task()
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=1, out_dir=str(run))
    with pytest.raises(ValueError, match="corrupt"):
        fit(cfg, train, test, resume=True, progress=False)
    torch.save({"weights": torch.zeros(2)}, run / "checkpoint.pt")
    with pytest.raises(ValueError, match="not a nowt checkpoint"):
        fit(cfg, train, test, resume=True, progress=False)
    fit(cfg, train, test, progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        fit(TrainConfig(rule="kp", hidden=(8,), epochs=1, out_dir=str(run)), train, test, resume=True,
            progress=False)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_divergence_stops_with_a_clear_message():
    train, test = teacher_task()
    with pytest.raises(FloatingPointError, match="lower --lr"):
        fit(TrainConfig(rule="bp", hidden=(32,), epochs=2, lr=1e6, optimizer="sgd"), train, test,
            progress=False)


def test_cli_train_prints_test_accuracy(capsys):
    assert main(["train", "--rule", "fa", "--epochs", "1", "--hidden", "32", "--batch-size", "128",
                 "--lr", "0.05", "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("test accuracy: ") and line.endswith("%")
    assert float(line.split()[-1].rstrip("%")) > 85


def test_cli_rejects_bad_input(capsys):
    assert main(["train", "--rule", "xx"]) == 2
    assert "nowt train: error: unknown rule 'xx'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--hidden", "ten"])
    assert "comma-separated" in capsys.readouterr().err
    assert main(["train", "--data-dir", "/nonexistent", "--epochs", "1"]) == 2
    assert "/nonexistent" in capsys.readouterr().err


@pytest.mark.parametrize("values, message", [
    (dict(hidden=[0]), r"hidden \(--hidden\) must be >= 1"),
    (dict(hidden="a,b"), "comma-separated"),
    (dict(epochs=1.5), r"epochs \(--epochs\) expects an integer >= 1, got 1.5"),
    (dict(deterministic="false"), r"deterministic \(--deterministic\) expects true or false, got 'false'"),
    (dict(lr=True), r"lr \(--lr\) expects a number > 0.0, got True \(bool\)"),
    (dict(lr=0), r"lr \(--lr\) must be > 0.0"),
    (dict(train_size=0), r"train_size \(--train-size\) must be >= 1"),
    (dict(train_size=-100), r"must be >= 1, got -100"),
    (dict(dropout=1.0), "must be >= 0.0 and < 1.0"),
    (dict(rule="zz"), "unknown rule 'zz' .*choose from: bp, fa"),
    (dict(model="resnet9"), "unknown model 'resnet9' .*mlp.*mnist_lc"),
    (dict(dataset="svhn"), "unknown dataset 'svhn' .*mnist"),
    (dict(device="foo"), "unknown device 'foo'"),
    (dict(out_dir=""), "empty"),
    (dict(epochz=3), r"unknown key\(s\) \['epochz'\]"),
])
def test_config_values_are_checked_once_with_a_one_line_error(values, message):
    with pytest.raises(ValueError, match=message) as e:
        TrainConfig.from_dict(values)
    assert "\n" not in str(e.value)


def test_config_normalises_what_it_accepts(tmp_path):
    cfg = TrainConfig.from_dict({"hidden": [500, 500], "lr": 1, "batch-size": 8, "train_size": None})
    assert (cfg.hidden, cfg.lr, type(cfg.lr), cfg.batch_size) == ((500, 500), 1.0, float, 8)
    assert TrainConfig.from_dict({"hidden": "64,32"}).hidden == (64, 32)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        TrainConfig(out_dir=str(afile)).validate()
    with pytest.raises(ValueError, match="unknown amp 'fp8'"):  # fit checks the config it is given
        fit(TrainConfig(amp="fp8"), *teacher_task(), progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_cpu_machine_is_refused():
    with pytest.raises(ValueError, match="'cuda' .*not available.*--device cpu"):
        TrainConfig(device="cuda").validate()


def test_rule_options_go_to_the_rules_that_declare_them():
    wm = train_mod.rule_options(TrainConfig(rule="wm", mirror_steps=3))
    assert wm["mirror_steps"] == 3 and wm["mirror_warmup"] == 300 and wm["mirror_every"] == 8
    assert set(wm) == {k for k in rule_class("wm").options if k.startswith("mirror_")}
    assert train_mod.rule_options(TrainConfig(rule="dtp", schedule="alternating", sigma=0.2)) == \
        {"schedule": "alternating", "alternate_every": 0, "inverse_lr": 1e-4, "inverse_betas": (0.9, 0.999),
         "inverse_eps": 1e-8, "sigma": 0.2, "alpha": 0.1}
    assert train_mod.rule_options(TrainConfig(rule="fa")) == {}
    with pytest.raises(ValueError, match="--schedule applies only to: tp, dtp, sdtp, ao-sdtp"):
        train_mod.rule_options(TrainConfig(rule="fa", schedule="alternating"))
    with pytest.raises(ValueError, match="--mirror-steps applies only to: wm"):
        train_mod.rule_options(TrainConfig(rule="kp", mirror_steps=2))


def test_one_model_registry_holds_the_target_propagation_networks():
    assert {"mlp", "resnet20", "mnist_fc", "mnist_lc", "cifar_lc"} <= set(nowt.models.MODELS)
    assert nowt.models.create_model("mnist_fc").input_shape == (1, 28, 28)

    def mlp():  # a second, different factory under a registered name
        return None

    with pytest.raises(ValueError, match="'mlp' is already registered"):
        nowt.models.register_model(mlp)
    # registered where they are defined, with the activation they are built with
    assert nowt.models.FIXED_ACTIVATION["mnist_lc"] == "tanh" and "mlp" not in nowt.models.FIXED_ACTIVATION

    def toy_tanh_net():
        return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh())

    try:
        assert nowt.models.register_model(activation="tanh")(toy_tanh_net) is toy_tanh_net
        assert nowt.models.FIXED_ACTIVATION["toy_tanh_net"] == "tanh"
        assert isinstance(nowt.models.create_model("toy_tanh_net")[1], torch.nn.Tanh)
    finally:
        nowt.models.MODELS.pop("toy_tanh_net", None)
        nowt.models.FIXED_ACTIVATION.pop("toy_tanh_net", None)


# --- the general trainer: DataLoader data, mid-step kills, learners, metrics -----------------------------

def _kill_in_step(monkeypatch, at: int):
    """Makes the `at`-th training step raise KeyboardInterrupt: the process dies mid-epoch."""
    calls = {"n": 0}
    real = train_mod.RuleLearner.train_step

    def step(self, x, y):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(self, x, y)

    monkeypatch.setattr(train_mod.RuleLearner, "train_step", step)
    return real


@pytest.mark.parametrize("data", ["tensors", "augmented-dataset"])
def test_run_killed_mid_epoch_resumes_to_the_same_numbers(tmp_path, monkeypatch, data):
    from nowt.data import TransformDataset
    from nowt.data.transforms import Compose, RandomCrop, RandomHorizontalFlip

    (x, y), test = teacher_task(d=16)
    x, test = x.view(-1, 1, 4, 4), (test[0].view(-1, 1, 4, 4), test[1])
    # Random crops and flips draw from torch's RNG, so resuming them exactly needs the RNG checkpointed.
    train = (x, y) if data == "tensors" else TransformDataset(x, y, Compose([RandomCrop(4, 1),
                                                                            RandomHorizontalFlip()]))
    cfg = dict(rule="kp", hidden=(16,), dropout=0.2, epochs=3, batch_size=50, lr=0.05, optimizer="rmsprop",
               momentum=0.5, lr_schedule="step", weight_decay=1e-4)
    unbroken = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "a")), train, test, progress=False)
    real = _kill_in_step(monkeypatch, at=10 + 5)  # 10 steps per epoch: dies in the middle of epoch 2
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**cfg, out_dir=str(tmp_path / "b")), train, test, progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(train_mod.RuleLearner, "train_step", real)
    resumed = fit(TrainConfig(**cfg, out_dir=str(tmp_path / "b")), train, test, resume=True, progress=False)
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in unbroken] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in resumed]
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "1.feedback" in b["model"]  # kp's learned feedback is part of the checkpoint


def test_epoch_metrics_hold_errors_angles_and_lr(tmp_path):
    train, test = teacher_task()
    cfg = TrainConfig(rule="fa", hidden=(16, 8), epochs=2, batch_size=50, lr=0.05, lr_schedule="constant",
                      out_dir=str(tmp_path))
    hist = fit(cfg, train, test, progress=False)
    r = hist[-1]
    assert r["test_top1_error"] == pytest.approx(100 - r["test_accuracy"])
    assert r["test_top5_error"] == 0.0  # 3 classes: the label is always among the top 5
    assert set(r["weight_angles"]) == set(r["update_angles"]) == {"1", "3", "5"}
    assert r["update_angles"]["5"] == pytest.approx(0.0, abs=1e-6)  # the output layer's update is exact
    assert 0 < r["update_angles"]["1"] < 90 and r["lr"] == 0.05
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["hidden"] == [16, 8]


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train, test = teacher_task()
    real = train_mod.RuleLearner.train_step
    calls = {"n": 0}

    def nan_in_epoch_two(self, x, y):
        calls["n"] += 1
        out = real(self, x, y)
        return {**out, "loss": math.nan} if calls["n"] == 15 else out

    monkeypatch.setattr(train_mod.RuleLearner, "train_step", nan_in_epoch_two)
    with pytest.raises(FloatingPointError, match="last good checkpoint"):
        fit(TrainConfig(rule="fa", hidden=(8,), epochs=3, batch_size=50, out_dir=str(tmp_path)), train, test,
            progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_a_nan_in_the_first_epoch_leaves_no_checkpoint(tmp_path, monkeypatch):
    """The loss is read from the device once per LOG_EVERY steps and at the epoch's end, before the
    checkpoint: a NaN between two reads still stops the run before anything is saved."""
    monkeypatch.setattr(loop_mod, "LOG_EVERY", 4)
    train, test = teacher_task()
    real = train_mod.RuleLearner.train_step
    losses = []

    def nan_at_step_3(self, x, y):
        out = real(self, x, y)
        losses.append(out["loss"])
        return {**out, "loss": torch.tensor(math.nan)} if len(losses) == 3 else out

    monkeypatch.setattr(train_mod.RuleLearner, "train_step", nan_at_step_3)
    with pytest.raises(FloatingPointError, match="by step 4 of fa epoch 1/2"):
        fit(TrainConfig(rule="fa", hidden=(8,), epochs=2, batch_size=50, out_dir=str(tmp_path)), train, test,
            progress=False)
    assert isinstance(losses[0], torch.Tensor) and not (tmp_path / "checkpoint.pt").exists()


def test_deterministic_mode_is_on_during_the_run_and_restored_after():
    train, test = teacher_task()
    seen = []
    real = loop_mod.evaluate

    def spy(*args, **kwargs):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop_mod, "evaluate", spy)
        fit(TrainConfig(rule="bp", hidden=(4,), epochs=1, deterministic=True), train, test, progress=False)
    assert seen == [True] and not torch.are_deterministic_algorithms_enabled()


class FakeTargetProp:
    """Stands in for nowt.targetprop.TargetPropTrainer: trains the plain network by SGD."""

    instances: list = []

    def __init__(self, network, algorithm, schedule, lr, seed, **adam_and_target_options):
        self.model, self.algorithm, self.schedule, self.epochs_ended = network, algorithm, schedule, 0
        self.options = adam_and_target_options
        self.opt = torch.optim.SGD(network.parameters(), lr=lr)
        FakeTargetProp.instances.append(self)

    def train_step(self, x, y):
        out = self.model(x)
        loss = torch.nn.functional.cross_entropy(out, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.item(), "accuracy": 100.0 * float((out.argmax(1) == y).float().mean())}

    def end_epoch(self, train_metrics=None):
        self.epochs_ended += 1

    def measure(self, x, y):
        return {"update_angles": {"epochs ended": float(self.epochs_ended)}}

    def state_dict(self):
        return {"opt": self.opt.state_dict(), "epochs_ended": self.epochs_ended}

    def load_state_dict(self, state):
        self.opt.load_state_dict(state["opt"])
        self.epochs_ended = state["epochs_ended"]


def test_target_propagation_rules_dispatch_to_the_targetprop_trainer(tmp_path, monkeypatch):
    import nowt.targetprop.trainer

    # the registered rule's `learner` builds the trainer
    monkeypatch.setattr(nowt.targetprop.trainer, "TargetPropTrainer", FakeTargetProp)
    train, test = teacher_task()
    cfg = TrainConfig(rule="sdtp", schedule="alternating", hidden=(16,), activation="tanh", epochs=2,
                      batch_size=50, lr=0.1, out_dir=str(tmp_path))
    hist = fit(cfg, train, test, progress=False)
    tp = FakeTargetProp.instances[-1]
    assert (tp.algorithm, tp.schedule, tp.epochs_ended) == ("sdtp", "alternating", 2)
    assert not nowt.feedback_layers(tp.model)  # the plain network, not converted to a per-layer rule
    assert hist[-1]["test_accuracy"] > 60 and hist[-1]["train_accuracy"] > 50
    assert hist[-1]["weight_angles"] == {}  # no B; the rule learner's own diagnostics, after each epoch:
    assert [r["update_angles"] for r in hist] == [{"epochs ended": 1.0}, {"epochs ended": 2.0}]
    saved = json.loads((tmp_path / "config.json").read_text())  # what it ran, not the unused defaults
    assert (saved["optimizer"], saved["lr_schedule"]) == ("adam", "constant")
    cfg.lr = 0.2
    with pytest.raises(ValueError, match="another configuration"):
        fit(cfg, train, test, resume=True, progress=False)
    cfg.lr, cfg.epochs = 0.1, 3  # a folder saved before TP's config recorded what it runs still resumes
    (tmp_path / "config.json").write_text(json.dumps({**saved, "optimizer": "sgd", "lr_schedule": "cosine"}))
    assert len(fit(cfg, train, test, resume=True, progress=False)) == 3


def test_noise_pretraining_is_called_before_training(monkeypatch):
    import nowt.noise

    calls = []

    def pretrain_noise(model, input_shape, *, steps, batch_size, seed, progress):
        calls.append((nowt.weight_angles(model), input_shape, steps, batch_size, seed))

    monkeypatch.setattr(nowt.noise, "pretrain_noise", pretrain_noise)
    train, test = teacher_task()
    fit(TrainConfig(rule="fa", hidden=(4,), epochs=1, noise_pretrain=7, batch_size=16, seed=3), train, test,
        progress=False)
    assert len(calls) == 1 and calls[0][1:] == ((20,), 7, 16, 3) and set(calls[0][0]) == {"1", "3"}
    with pytest.raises(ValueError, match="needs a per-layer rule"):
        fit(TrainConfig(rule="dtp", hidden=(4,), epochs=1, noise_pretrain=7), train, test, progress=False)


def test_target_propagation_refuses_options_it_would_ignore():
    train, test = teacher_task()
    for option in (dict(loss="bce"), dict(amp="bf16"), dict(weight_decay=1e-4), dict(channels_last=True)):
        with pytest.raises(ValueError, match="does not support"):
            fit(TrainConfig(rule="dtp", activation="tanh", hidden=(4,), epochs=1, **option), train, test,
                progress=False)


def test_a_run_made_before_a_config_field_existed_still_resumes(tmp_path):
    train, test = teacher_task()
    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=2, batch_size=100, out_dir=str(tmp_path))
    first = fit(cfg, train, test, progress=False)
    # an older nowt wrote no input_dropout: its absence means the default
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["input_dropout"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    del state["config"]["input_dropout"]
    save_checkpoint(tmp_path / "checkpoint.pt", state)
    assert cfg.identity_differences(saved) == []
    # an option of another rule cannot change an fa run (it is refused when set): not part of its identity
    assert cfg.identity_differences({**saved, "mirror_every": 2}) == []
    assert TrainConfig(rule="wm").identity_differences({**TrainConfig(rule="wm").identity(),
                                                         "mirror_every": 2}) == ["mirror_every"]
    assert fit(cfg, train, test, resume=True, progress=False) == first
    with pytest.raises(ValueError, match="input_dropout"):
        fit(TrainConfig(**{**cfg.__dict__, "input_dropout": 0.2}), train, test, resume=True, progress=False)


def test_patience_stops_once_the_best_test_error_is_that_many_epochs_old(monkeypatch):
    errors = iter([30.0, 20.0, 25.0, 21.0, 20.0, 5.0, 5.0])  # the best (20) is 2 epochs old after epoch 4

    def scripted_evaluate(*args, **kwargs):
        e = next(errors)
        return {"loss": 1.0, "accuracy": 100 - e, "top1_error": e, "top5_error": 0.0}

    monkeypatch.setattr(loop_mod, "evaluate", scripted_evaluate)
    train, test = teacher_task()
    history = fit(TrainConfig(rule="bp", hidden=(8,), epochs=7, batch_size=100, patience=3), train, test,
                  progress=False)
    assert [r["test_top1_error"] for r in history] == [30.0, 20.0, 25.0, 21.0, 20.0]  # 20 again is not better


def test_patience_follows_the_validation_error_when_examples_are_held_out(monkeypatch):
    """With --validation, --patience stopped on the test error all the same: the test set chose the run's
    length (and so its "test error at the best validation epoch"), which --validation is there to prevent."""
    test_errors = iter([30.0, 20.0, 25.0, 21.0, 22.0, 23.0, 24.0])  # the test's best is 3 epochs old after 5
    val_errors = iter([30.0, 25.0, 24.0, 23.0, 22.0, 21.0, 20.0])  # the held-out error keeps falling
    calls = iter([test_errors, val_errors] * 7)  # each epoch scores the test set, then the held-out one

    def scripted_evaluate(*args, **kwargs):
        e = next(next(calls))
        return {"loss": 1.0, "accuracy": 100 - e, "top1_error": e, "top5_error": 0.0}

    monkeypatch.setattr(loop_mod, "evaluate", scripted_evaluate)
    train, test = teacher_task()
    cfg = TrainConfig(rule="bp", hidden=(8,), epochs=7, batch_size=100, patience=3, validation=50)
    history = fit(cfg, train, test, progress=False)
    assert [r["val_top1_error"] for r in history] == [30.0, 25.0, 24.0, 23.0, 22.0, 21.0, 20.0]
    assert loop_mod.run_ended(history[:5], 7, 3, "constant") is False  # the tables read the same rule


def test_a_run_starts_by_printing_each_layers_rule_and_what_its_backward_reads(capsys):
    from nowt.train import TrainConfig, fit

    fit(TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, rule="fa"), progress=True)
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["layer", "type", "rule", "feedback", "backward", "reads"]
    assert out.splitlines()[1].split() == ["1", "nowt.layers.Linear", "fa", "(8,", "64)", "B"]
    fit(TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, rule="fa"), progress=False)
    assert "backward reads" not in capsys.readouterr().out  # quiet runs (tests, --no-progress) print none


def test_the_vit_pool_and_dfa_storage_and_error_at_reach_model_and_rule():
    """`--pool`, `--storage` and `--error-at` (Launay et al.'s ViT settings, issue 28) are TrainConfig fields
    that build_model hands to the model and the rule."""
    from nowt.train import build_model

    cfg = TrainConfig(rule="dfa", model="vit", dataset="synthetic", pool="mean", storage="seeded",
                      error_at="head", blocks=("blocks.*",), position_feedback="shared")
    model = build_model(cfg, (1, 28, 28), 10)
    assert model.pool == "mean" and model.pos.shape[1] == 16  # no class token
    (rule,) = {id(r): r for r in nowt.feedback_rules(model)}.values()
    assert rule.storage == "seeded" and rule.error_at == "head"
    assert build_model(TrainConfig(model="vit"), (1, 28, 28), 10).pool == "cls"  # the default
