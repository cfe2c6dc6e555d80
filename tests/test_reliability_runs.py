"""Issue 25 (reliability), in the training loop, config, CLI and checkpoints: no diverged run called a
success, nothing deleted before it is replaced, every flag honoured or refused, empty DDP shards, and one
line instead of a traceback."""

import os
import socket

import pytest
import torch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _float_fields():
    from dataclasses import fields
    from typing import get_type_hints

    from nowt.train import TrainConfig

    hints = get_type_hints(TrainConfig)
    return [f.name for f in fields(TrainConfig) if "float" in str(hints[f.name])]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_a_non_finite_value(bad):
    from nowt.train import TrainConfig

    names = _float_fields()
    assert {"lr", "momentum", "dropout", "adam_betas", "inverse_betas", "mirror_lr"} <= set(names)
    for name in names:
        value = (0.9, bad) if name.endswith("betas") else bad
        with pytest.raises(ValueError, match=f"^{name} .*must be a finite number"):
            TrainConfig(**{name: value}).validate()


def test_cli_refuses_nan_and_inf_flags_in_one_line(capsys):
    from nowt.cli import main

    for argv in (["--momentum", "nan"], ["--momentum", "inf"], ["--dropout", "nan"],
                 ["--adam-betas", "nan,0.9"]):
        assert main(["train", *argv, "--epochs", "1", "--train-size", "64", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "must be a finite number" in err, err


def test_a_non_finite_test_loss_is_divergence(tmp_path):
    """One step at lr 1e30 leaves a finite training loss (taken before the step) and NaN weights."""
    from nowt.train import TrainConfig, fit

    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, batch_size=2000, lr=1e30,
                      lr_schedule="constant", out_dir=str(tmp_path / "run"))
    with pytest.raises(FloatingPointError, match="test loss became nan by the end of epoch 1; lower --lr"):
        fit(cfg, progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_non_finite_weight_the_output_does_not_show_is_divergence(tmp_path, monkeypatch):
    """fa's feedback matrix does not enter the forward pass: a NaN there leaves the losses finite."""
    from nowt.checkpoint import load_checkpoint
    from nowt.train import RuleLearner, TrainConfig, fit

    real = RuleLearner.end_epoch

    def poison_in_epoch_two(self, metrics):
        real(self, metrics)
        if self.scheduler.last_epoch > 20:  # 20 steps an epoch
            self.model[1].feedback.fill_(float("nan"))

    monkeypatch.setattr(RuleLearner, "end_epoch", poison_in_epoch_two)
    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=3, batch_size=100, out_dir=str(tmp_path))
    with pytest.raises(FloatingPointError, match=r"1\.feedback became non-finite by the end of epoch 2"):
        fit(cfg, progress=False)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["--hidden", ""], r"argument --hidden: no items in '': give at least one"),  # refused by argparse
    (["--seed", "99999999999999999999"], r"seed \(--seed\) must be >= 0 and < 9223372036854775808"),
])
def test_flags_that_built_a_linear_model_or_overflowed_are_refused(capsys, argv, says):
    import re

    from nowt.cli import main

    try:
        code = main(["train", *argv, "--epochs", "1", "--train-size", "64", "--no-progress"])
    except SystemExit as stop:  # argparse's refusal
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(says, err), err


def test_a_toml_key_the_command_ignores_is_refused(tmp_path, capsys):
    from nowt.cli import main
    from nowt.train import TrainConfig

    with pytest.raises(ValueError, match=r"hidden \(--hidden\) is empty"):
        TrainConfig.from_dict({"hidden": []})
    config = tmp_path / "run.toml"
    config.write_text('rules = ["fa", "kp"]\nepochs = 1\n')
    assert main(["train", "--config", str(config), "--no-progress"]) == 2
    assert "unknown key(s) ['rules'] for nowt train" in capsys.readouterr().err
    config.write_text('rule = "kp"\nepochs = 1\n')
    assert main(["compare", "--config", str(config), "--no-progress"]) == 2
    assert "unknown key(s) ['rule'] for nowt compare" in capsys.readouterr().err


def _files(run) -> dict:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def test_overwrite_keeps_the_earlier_run_until_the_new_one_is_valid(tmp_path):
    from dataclasses import replace

    from nowt.train import TrainConfig, fit

    run = tmp_path / "run"
    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, batch_size=500, out_dir=str(run))
    fit(cfg, progress=False)
    (run / "tensorboard").mkdir(exist_ok=True)
    (run / "tensorboard" / "events.earlier").write_text("x")
    before = _files(run)
    assert {"checkpoint.pt", "metrics.jsonl", "config.json"} <= set(before)
    with pytest.raises(ValueError, match="typo"):  # refused by convert, after the claim
        fit(replace(cfg, rule="dfa", blocks=("typo",)), overwrite=True, progress=False)
    assert _files(run) == before and not (run / ".overwritten").exists()
    with pytest.raises(ValueError, match="--resume and --overwrite exclude each other"):
        fit(cfg, resume=True, overwrite=True, progress=False)
    fit(replace(cfg, rule="kp"), overwrite=True, progress=False)
    after = _files(run)
    assert '"rule": "kp"' in after["config.json"].decode() and "tensorboard/events.earlier" not in after
    assert not (run / ".overwritten").exists()


def test_a_replacement_killed_before_its_first_checkpoint_gives_the_earlier_run_back(tmp_path):
    from nowt.train import TrainConfig, fit

    run = tmp_path / "run"
    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=2, lr_schedule="constant", batch_size=500,
                      out_dir=str(run))
    fit(cfg, progress=False)
    before = _files(run)
    aside = run / ".overwritten"  # what --overwrite left when killed before the new run's first checkpoint
    aside.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl", "config.json", "provenance.jsonl"):
        (run / name).rename(aside / name)
    (run / "config.json").write_text('{"rule": "bp"}')
    assert len(fit(cfg, resume=True, progress=False)) == 2  # the earlier run, whole, resumed
    assert _files(run) == before and not aside.exists()


def _torchrun_train(*args: str):
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
           f"--rdzv-endpoint=127.0.0.1:{_free_port()}", "-m", "nowt", "train", "--dataset", "synthetic",
           "--hidden", "8", "--no-progress", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


def test_under_torchrun_a_locked_directory_ends_every_rank_with_one_line(tmp_path):
    import fcntl

    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        done = _torchrun_train("--epochs", "1", "--out", str(out))
    assert done.returncode != 0
    assert "in use by another run (pid 4242)" in done.stderr
    assert "rank 0 refused the run directory" in done.stderr, done.stderr[-3000:]
    # the one traceback left is torchrun's own summary, not a rank's
    assert done.stderr.count("Traceback") <= 1 and "gloo" not in done.stderr.lower(), done.stderr[-3000:]


@pytest.mark.parametrize("argv", [["--lr-schedule", "step"], ["--lr-schedule", "plateau"],
                                  ["--optimizer", "rmsprop"], ["--momentum", "0.5"],
                                  ["--bias-lr-scale", "5.0"],
                                  ["--lr-schedule", "constant", "--lr-milestones", "1"]])
def test_target_propagation_refuses_each_flag_it_would_ignore(capsys, argv):
    from nowt.cli import main

    base = ["train", "--rule", "dtp", "--dataset", "synthetic", "--activation", "tanh", "--hidden", "8",
            "--epochs", "1", "--no-progress"]
    assert main(base + argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"does not support {argv[-2]} {argv[-1]};" in err, err
    assert main(base + ["--lr-schedule", "constant", "--optimizer", "adam"]) == 0  # what it does: accepted


@pytest.mark.parametrize("rule", ["fa", "dtp"])
def test_under_torchrun_a_last_batch_smaller_than_the_world_is_no_divergence(tmp_path, rule):
    """65 examples in batches of 32: the last global batch (1 example) leaves rank 1 nothing. The ranks'
    gradients are weighted by their share, so two ranks give what one process gives (fa; target
    propagation's inverse-loss noise is drawn per rank)."""
    import json

    from nowt.train import TrainConfig, fit

    tp = ["--activation", "tanh", "--optimizer", "adam", "--lr-schedule", "constant"] if rule == "dtp" else []
    args = ["--train-size", "65", "--batch-size", "32", "--epochs", "2", "--rule", rule, *tp]
    done = _torchrun_train(*args, "--out", str(tmp_path / "ddp"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout
    if rule == "dtp":
        return
    two = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    one = fit(TrainConfig(dataset="synthetic", hidden=(8,), train_size=65, batch_size=32, epochs=2),
              progress=False)
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_a_full_disk_during_the_checkpoint_write_is_one_line_naming_it(tmp_path, monkeypatch):
    from nowt.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def full(*args, **kwargs):  # what torch's zip writer raises on ENOSPC
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 9728 vs 9616")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError, match=rf"cannot write checkpoint {path} \(.*unexpected pos 9728 vs 9616\); "
                                      r"\d+ MiB free on its disk: .*previous checkpoint is kept") as info:
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert "\n" not in str(info.value) and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))


def test_an_allocation_too_large_is_one_line_naming_the_flags(monkeypatch, capsys):
    import nowt.train.factories as factories
    from nowt.cli import main

    def huge(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 3136000000000 bytes. Error code 12")

    monkeypatch.setattr(factories, "convert", huge)
    assert main(["train", "--hidden", "100", "--dataset", "synthetic", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of memory building model mlp for inputs (1, 8, 8) (--hidden 100) " \
                                    "(2920.6 GiB at once)" in err, err
    monkeypatch.setattr(factories, "convert", lambda *a, **k: 1 / 0)  # any other error is not hidden
    with pytest.raises(ZeroDivisionError):
        main(["train", "--dataset", "synthetic", "--epochs", "1", "--debug"])


def test_a_config_json_that_is_no_object_and_a_checkpoint_without_a_model_are_named(tmp_path):
    from nowt.checkpoint import load_checkpoint, save_checkpoint
    from nowt.train import TrainConfig, evaluate_run, fit

    run = tmp_path / "run"
    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, batch_size=500, lr_schedule="constant",
                      out_dir=str(run))
    fit(cfg, progress=False)
    good = (run / "config.json").read_text()
    (run / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json holds a JSON list, not a run's config"):
        evaluate_run(run)
    with pytest.raises(ValueError, match=r"run directory .*config.json holds a JSON list.*--overwrite"):
        fit(cfg, resume=True, progress=False)
    (run / "config.json").write_text(good)
    state = load_checkpoint(run / "checkpoint.pt")
    del state["model"]
    save_checkpoint(run / "checkpoint.pt", state)
    with pytest.raises(ValueError, match="checkpoint .* lacks model: not a checkpoint of a nowt run"):
        evaluate_run(run)
    with pytest.raises(ValueError, match="lacks model"):
        fit(replace_epochs(cfg, 2), resume=True, progress=False)
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    raw["format"] = "nowt-checkpoint-v1"  # before checksums: loaded, but said to be unverified
    torch.save(raw, run / "checkpoint.pt")
    with pytest.warns(RuntimeWarning, match="written before checksums: loaded unverified"), \
            pytest.raises(ValueError, match="lacks model"):
        evaluate_run(run)


def replace_epochs(cfg, epochs):
    from dataclasses import replace

    return replace(cfg, epochs=epochs)


def test_a_truncated_image_in_a_dataloader_worker_is_one_line_naming_it(tmp_path):
    import numpy as np
    from PIL import Image

    from nowt.train import TrainConfig, fit

    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            for i in range(2):
                pixels = np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / label / f"{i}.png")
    bad = tmp_path / "train" / "a" / "0.png"
    bad.write_bytes(bad.read_bytes()[:100])
    cfg = TrainConfig(dataset="imagenet", data_dir=str(tmp_path), hidden=(4,), epochs=1, batch_size=4,
                      num_workers=1)
    says = rf"^cannot decode image {bad} .*\(in DataLoader worker process 0\)$"
    with pytest.raises(ValueError, match=says) as info:
        fit(cfg, progress=False)
    assert "\n" not in str(info.value)


def test_a_diverged_run_is_marked_ended_and_not_resumed(tmp_path):
    """A run that diverged has ended: its folder says where, and resuming (which would replay the steps that
    diverged) is refused; --overwrite starts again."""
    import json

    from nowt.train import TrainConfig, fit

    cfg = TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, batch_size=2000, lr=1e30,
                      lr_schedule="constant", out_dir=str(tmp_path / "run"))
    with pytest.raises(FloatingPointError):
        fit(cfg, progress=False)
    marker = json.loads((tmp_path / "run" / "diverged.json").read_text())
    assert marker["epoch"] == 1 and marker["message"].startswith("the run diverged: test loss became nan")
    assert marker["message"].endswith("; lower --lr (no epoch had ended: no checkpoint)")
    for resume in (True, False):
        with pytest.raises(ValueError, match="diverged in epoch 1.*--overwrite to start again"):
            fit(cfg, resume=resume, progress=False)
    cfg.lr = 0.1  # another configuration replacing it: the marker goes with the run it marked
    fit(cfg, overwrite=True, progress=False)
    assert not (tmp_path / "run" / "diverged.json").exists()
    cfg.lr = 1e30  # a replacement that diverges before its first checkpoint has ended: the old run stays gone
    with pytest.raises(FloatingPointError):
        fit(cfg, overwrite=True, progress=False)
    assert (tmp_path / "run" / "diverged.json").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 1e30


def test_a_run_resumed_on_other_data_is_refused(tmp_path):
    """--data-dir is no part of a run's identity (the same files lie elsewhere on another machine): a resume
    pointed at another corpus continued as if nothing had changed. The checkpoint now keeps a fingerprint."""
    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=1, batch_size=100, lr_schedule="constant",
                      out_dir=str(tmp_path))
    fit(cfg, *teacher_task(seed=0), progress=False)
    cfg.epochs = 2
    with pytest.raises(ValueError, match="trained on other data .*pass its own --data-dir"):
        fit(cfg, *teacher_task(seed=1), resume=True, progress=False)
    assert len(fit(cfg, *teacher_task(seed=0), resume=True, progress=False)) == 2  # its own data resumes


def test_a_resume_with_other_workers_on_a_dataset_is_refused(tmp_path):
    """num_workers is no part of a run's identity, but a Dataset's random transforms draw from torch's global
    RNG (checkpointed) with 0 workers and from per-worker seeds with more: a resume under another --workers
    continued with other augmentation draws, to other numbers than an unbroken run's."""
    from conftest import teacher_task

    from nowt.data import TransformDataset
    from nowt.data.transforms import Compose, RandomCrop, RandomHorizontalFlip
    from nowt.train import TrainConfig, fit

    (x, y), test = teacher_task(d=16)
    x, test = x.view(-1, 1, 4, 4), (test[0].view(-1, 1, 4, 4), test[1])
    augmented = TransformDataset(x, y, Compose([RandomCrop(4, 1), RandomHorizontalFlip()]))
    for name, train in (("tensors", (x, y)), ("dataset", augmented)):
        cfg = TrainConfig(hidden=(8,), epochs=1, batch_size=100, lr_schedule="constant",
                          out_dir=str(tmp_path / name))
        fit(cfg, train, test, progress=False)
        cfg.epochs, cfg.num_workers = 2, 2
        if name == "tensors":  # batched in the process whatever --workers says: it may change
            assert len(fit(cfg, train, test, resume=True, progress=False)) == 2
            continue
        says = r"\(it differs in num_workers; a Dataset's random transforms draw per DataLoader worker\); "
        with pytest.raises(ValueError, match=says + "resume with --workers 0, or use a new --out"):
            fit(cfg, train, test, resume=True, progress=False)
        cfg.num_workers = 0
        assert len(fit(cfg, train, test, resume=True, progress=False)) == 2
    # a checkpoint from before num_workers was saved resumes as before: its workers are not known
    earlier = {k: v for k, v in TrainConfig().identity().items() if k != "num_workers"}
    assert TrainConfig(num_workers=2).identity_differences(earlier, dataset=True) == []
    assert TrainConfig(num_workers=2).identity_differences(TrainConfig().identity()) == []
