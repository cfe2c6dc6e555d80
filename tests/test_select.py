"""nowt compare --lr-grid: every rule's learning rate chosen from one grid on examples held out of the
training set, never on the test set."""

import json

import numpy as np
import pytest
import torch

from nowt.train.select import holdout


def test_holdout_is_a_balanced_sample_disjoint_from_the_rest_and_the_same_every_time():
    x = torch.arange(100.0).unsqueeze(1)
    y = torch.arange(100) % 4
    (xa, ya), (xb, yb) = holdout((x, y), 20)
    assert len(ya) == 80 and len(yb) == 20 and torch.bincount(yb).tolist() == [5, 5, 5, 5]
    assert set(xa.squeeze(1).tolist()).isdisjoint(xb.squeeze(1).tolist())
    assert set(xa.squeeze(1).tolist()) | set(xb.squeeze(1).tolist()) == set(range(100))
    assert torch.equal(holdout((x, y), 20)[1][0], xb)
    with pytest.raises(ValueError, match="--holdout 100: hold out between 1 and 99"):
        holdout((x, y), 100)
    with pytest.raises(ValueError, match="not a text corpus"):
        holdout((x, torch.zeros(100, 3, dtype=torch.long)), 10)


def test_compare_lr_grid_chooses_each_rules_rate_on_held_out_examples(tmp_path, capsys):
    from nowt.cli import main

    out = tmp_path / "cmp"
    argv = ["compare", "--rules", "bp,fa", "--dataset", "synthetic", "--hidden", "16", "--epochs", "1",
            "--batch-size", "50", "--seeds", "0,1", "--lr-grid", "0.3,0.001", "--holdout", "400",
            "--lr-schedule", "constant", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "chosen on 400 examples held out of the training set (class-balanced, seed 1)" in printed
    for rule in ("bp", "fa"):
        scores = {}
        for lr in (0.001, 0.3):
            run = out / rule / "lr-grid" / f"lr{lr:g}"
            config = json.loads((run / "config.json").read_text())
            assert config["lr"] == lr and config["seed"] == 0 and "held out" in config["extra"]["test set"]
            scores[lr] = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["test_accuracy"]
        best = max(sorted(scores), key=scores.get)
        assert scores[0.3] != scores[0.001]  # the grid tells the rates apart on this task
        for seed in (0, 1):  # the test runs: the whole training set at the chosen rate
            config = json.loads((out / rule / f"seed{seed}" / "config.json").read_text())
            assert config["lr"] == best and config["extra"] == {}
        row = next(line for line in printed.splitlines() if line.startswith(f"| {rule} |"))
        assert row.endswith(f"| {best:g} |")
    assert "chosen on 400 examples" in (out / "report.md").read_text()
    from nowt.train import evaluate_run

    with pytest.warns(UserWarning, match="is a learning-rate grid run .*held out.*whole training set"):
        evaluate_run(out / "bp" / "lr-grid" / "lr0.3", ["test"])  # its test_* were validation scores


def test_holdout_without_a_grid_is_refused(tmp_path, capsys):
    from nowt.cli import main

    assert main(["compare", "--rules", "fa", "--dataset", "synthetic", "--hidden", "8", "--epochs", "1",
                 "--holdout", "10", "--no-progress", "--out", str(tmp_path / "c")]) == 2
    assert "--holdout applies with --lr-grid only" in capsys.readouterr().err


def test_a_reproduction_with_an_lr_grid_chooses_each_rows_rate_on_held_out_examples(tmp_path, monkeypatch):
    from nowt.reproduce import Reproduction, run_reproduction

    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(16,), epochs=1, batch_size=50,
                                    lr_schedule="constant"),
                        runs={"bp": {"rule": "bp"}, "fa": {"rule": "fa"}}, published={},
                        lr_grid=(0.3, 0.001), holdout=400)
    rows = {r["run"]: r for r in run_reproduction(tiny, out_dir=tmp_path, seeds=[0, 1], progress=False)}
    for label in ("bp", "fa"):
        scores = {lr: json.loads((tmp_path / label / "lr-grid" / f"lr{lr:g}" / "metrics.jsonl")
                                 .read_text().splitlines()[-1])["test_accuracy"] for lr in (0.3, 0.001)}
        best = max(sorted(scores), key=scores.get)
        for seed in (0, 1):
            assert json.loads((tmp_path / label / f"seed{seed}" / "config.json").read_text())["lr"] == best
        assert rows[label]["status"].startswith(f"lr {best:g} (held out: 0.3: {scores[0.3]:.2f}%, 0.001: ")
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")}
    again = {r["run"]: r for r in run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")} == mtimes
    assert again["fa"]["status"].startswith(rows["fa"]["status"].split(";")[0])
    assert "seed 2: not run" in again["fa"]["status"]

    def no_data(cfg):
        raise FileNotFoundError(f"{cfg.dataset} is not on this machine")
    # a gather without the data (the grid ran elsewhere) reported every row skipped and dropped its numbers
    monkeypatch.setattr("nowt.reproduce.entry.load_data", no_data)
    elsewhere = run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)
    assert [(r["status"], r["values"]) for r in elsewhere] == [(r["status"], r["values"])
                                                                for r in again.values()]
    monkeypatch.undo()
    quick = run_reproduction(tiny, out_dir=tmp_path / "q", quick=True, progress=False)
    assert not (tmp_path / "q" / "bp" / "lr-grid").exists() and quick[0]["status"] == "1 of 1 seeds"


def test_on_a_text_corpus_the_grid_scores_bits_per_character_on_its_validation_part(tmp_path, capsys):
    from test_text import write_corpus

    from nowt.cli import main

    write_corpus(tmp_path / "corpus")
    out = tmp_path / "cmp"
    argv = ["compare", "--rules", "fa", "--model", "gpt", "--dataset", "fortunes", "--data-dir",
            str(tmp_path / "corpus"), "--context", "16", "--epochs", "1", "--optimizer", "adamw",
            "--lr-grid", "0.003,0.00001", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "chosen on the corpus's validation part (" in printed and "bits per character" in printed
    bpc = {lr: json.loads((out / "fa" / "lr-grid" / f"lr{lr:g}" / "metrics.jsonl").read_text()
                          .splitlines()[-1])["test_bpc"] for lr in (0.003, 0.00001)}
    best = min(sorted(bpc), key=bpc.get)  # lower bits per character is better
    assert bpc[0.003] != bpc[0.00001]
    assert json.loads((out / "fa" / "config.json").read_text())["lr"] == best
    assert main(argv[:-2] + ["--holdout", "10", "--out", str(tmp_path / "x")]) == 2
    assert "a text corpus has a validation part of its own" in capsys.readouterr().err


def test_held_out_examples_are_scored_without_augmentation_for_every_dataset_kind(tmp_path):
    """--lr-grid with --augment: an image folder's held-out images were randomly cropped and flipped, unlike
    the test set's; augmented CIFAR-10, and an image folder under --train-size (a Subset), crashed reading
    `.samples`."""
    from PIL import Image
    from test_datasets import write_cifar
    from torch.utils.data import Subset

    from nowt.data import load_dataset, load_image_folder
    from nowt.data.registry import balanced_sample
    from nowt.train.select import HOLDOUT_SEED

    write_cifar(tmp_path / "cifar", n=8)
    data = load_dataset("cifar10", root=tmp_path / "cifar", augment=True)
    fit_part, (x, y) = holdout(data.train, 10)
    held = balanced_sample(data.train.y, 10, seed=HOLDOUT_SEED)
    assert torch.equal(x, data.train.x[held]) and torch.equal(y, data.train.y[held])  # no crop, no flip
    assert isinstance(fit_part, Subset) and fit_part.dataset is data.train and len(fit_part) == 30
    assert not set(fit_part.indices) & set(held.tolist())

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("val", 1)):
        for c in "abc":
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / "folder" / split / c / f"{i}.png")
    plain = load_image_folder(tmp_path / "folder", "train", augment=False)
    for train_size in (None, 9):
        data = load_dataset("imagenet", root=tmp_path / "folder", augment=True, train_size=train_size)
        fit_part, held_out = holdout(data.train, 3)
        base = data.train if train_size is None else data.train.dataset
        assert fit_part.dataset is base and held_out.dataset.samples is base.samples
        assert len(fit_part) == (9 if train_size is None else 6)
        assert sorted(y for _, y in (base.samples[i] for i in held_out.indices)) == [0, 1, 2]
        for k, i in enumerate(held_out.indices):
            x, label = held_out[k]
            assert torch.equal(x, held_out[k][0]) and torch.equal(x, plain[i][0]) and label == plain[i][1]


def test_compare_lr_grid_with_augmented_cifar_trains_and_scores_every_run(tmp_path, capsys):
    """nowt compare passes fit the data its config loaded (so fit accepts its --augment, --image-size, ...),
    and the grid's held-out part of augmented CIFAR-10 (which crashed reading `.samples`) is scored as
    plain tensors."""
    from test_datasets import write_cifar

    from nowt.cli import main

    write_cifar(tmp_path / "cifar", n=8)
    out = tmp_path / "cmp"
    argv = ["compare", "--rules", "fa", "--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"),
            "--augment", "--image-size", "16", "--hidden", "4", "--epochs", "1", "--batch-size", "10",
            "--lr-grid", "0.1,0.01", "--holdout", "10", "--no-progress", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    assert "chosen on 10 examples held out" in capsys.readouterr().out
    for run in ("lr-grid/lr0.1", "lr-grid/lr0.01", ""):
        config = json.loads((out / "fa" / run / "config.json").read_text())
        assert (config["augment"], config["image_size"]) == (True, 16)


def test_validation_holds_examples_out_of_training_and_scores_them_every_epoch():
    """--validation N trains on the training set less N held-out examples (the very run of the smaller set)
    and scores those every epoch as val_*, so a table can pick its epoch as a paper's validation split does
    (BioTorch's CIFAR-10 benchmark) rather than on the test set."""
    from conftest import teacher_task

    from nowt.reproduce.entry import METRICS
    from nowt.train import TrainConfig, fit

    train, test = teacher_task()
    cfg = TrainConfig(rule="fa", hidden=(8,), epochs=3, batch_size=50, lr_schedule="constant", validation=100)
    history = fit(cfg, train, test, progress=False)
    kept, held = holdout(train, 100, "--validation")
    cfg.validation = 0
    plain = fit(cfg, kept, test, progress=False)
    for r, p in zip(history, plain, strict=True):  # the same training: trained on the kept part alone
        assert (r["train_loss"], r["test_accuracy"]) == (p["train_loss"], p["test_accuracy"])
        assert 0 <= r["val_accuracy"] <= 100 and r["val_loss"] > 0 and "val_loss" not in p
    scored = fit(cfg, kept, held, progress=False)  # the same training, tested on the held-out part
    assert [r["val_accuracy"] for r in history] == [r["test_accuracy"] for r in scored]
    assert [r["val_loss"] for r in history] == [r["test_loss"] for r in scored]
    best = max(range(3), key=lambda i: history[i]["val_accuracy"])
    assert METRICS["test_error_at_best_validation"](history) == history[best]["test_top1_error"]
    with pytest.raises(ValueError, match="--validation 500: hold out between 1 and 499"):
        fit(TrainConfig(hidden=(8,), epochs=1, validation=500), train, test, progress=False)
