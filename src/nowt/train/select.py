"""A fair learning rate for every rule (`nowt compare --lr-grid`): each rule trains once per rate of one
grid on the training set less a held-out part, is scored on that part (never on the test set), and takes
the rate with the best final held-out accuracy; its test runs then train on the whole training set."""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from nowt.data.registry import HOLDOUT_SEED, Data, holdout
from nowt.train.config import TrainConfig
from nowt.train.loop import fit


def selection_data(data: Data, n_holdout: int | None) -> tuple[Any, Any, str]:
    """(what the grid runs train on, what they are scored on, how that was held out): a text corpus's own
    validation part, else `n_holdout` training examples (default a tenth) held out by `holdout`."""
    if data.validation is not None:
        if n_holdout:
            raise ValueError("--holdout: a text corpus has a validation part of its own, held out of the "
                             "training text; leave --holdout out")
        return (data.train, data.validation,
                f"the corpus's validation part ({len(data.validation[1])} windows)")
    n = n_holdout or len(data.train[1] if isinstance(data.train, tuple) else cast(Sized, data.train)) // 10
    fit_part, held_out = holdout(data.train, n)
    return (fit_part, held_out,
            f"{n} examples held out of the training set (class-balanced, seed {HOLDOUT_SEED})")


#: what a grid run's `extra["test set"]` says after how its held-out part was made
VALIDATION_SCORES = ": test_* are validation scores"


def grid_config(cfg: TrainConfig, lr: float, held_out: str, grid: Path) -> TrainConfig:
    """`cfg` at rate `lr`, trained in GRID/lrX and scored on the held-out examples that `held_out`
    describes (its config says so in `extra`)."""
    return replace(cfg, lr=lr, out_dir=str(Path(grid) / f"lr{lr:g}"),
                   extra={**cfg.extra, "test set": held_out + VALIDATION_SCORES})


def score(record: dict) -> float:
    """How good a grid run's final held-out record is: its accuracy, or minus its bits per character."""
    return -record["test_bpc"] if "test_bpc" in record else record["test_accuracy"]


def shown(record: dict) -> str:
    return f"bpc {record['test_bpc']:.3f}" if "test_bpc" in record else f"{record['test_accuracy']:.2f}%"


def best_lr(records: dict[float, dict]) -> float:
    """The rate whose final held-out record `score`s best; the lowest rate on a tie."""
    return max(sorted(records), key=lambda lr: score(records[lr]))


def choose_lr(cfg: TrainConfig, lrs: list[float], data: Data, n_holdout: int | None, grid: Path, *,
              resume: bool = False, overwrite: bool = False,
              progress: bool = True) -> tuple[float, dict[float, dict], str]:
    """Trains `cfg` (its rule, seed and budget) once per rate in `lrs` into GRID/lrX on the training data
    less its held-out part (`selection_data`), and returns `best_lr`, {rate: final held-out record} and how
    the part was held out."""
    fit_part, held_out, how = selection_data(data, n_holdout)
    records = {}
    for lr in lrs:
        history = fit(grid_config(cfg, lr, how, grid), fit_part, held_out, resume=resume,
                      overwrite=overwrite, progress=progress, data_from_cfg=True)  # `data` is cfg's
        records[lr] = history[-1]
    return best_lr(records), records, how
