"""A fair learning rate for every rule (`nowt compare --lr-grid`): each rule trains once per rate of one
grid on the training set less a held-out part, is scored on that part (never on the test set), and takes
the rate with the best final held-out accuracy; its test runs then train on the whole training set."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset

from nowt.data.registry import balanced_sample
from nowt.train.config import TrainConfig
from nowt.train.loop import fit

TensorPair = tuple[torch.Tensor, torch.Tensor]
#: the held-out sample's seed: not --train-size's (0), so that both may apply to one dataset
HOLDOUT_SEED = 1


def holdout(train: TensorPair | Dataset, n: int) -> tuple[TensorPair | Dataset, TensorPair | Dataset]:
    """(the training set less `n` held-out examples, those examples): a class-balanced random sample, the
    same for every rule and seed."""
    labels = train[1] if isinstance(train, tuple) else torch.as_tensor([y for _, y in train.samples])
    if labels.dim() != 1:
        raise ValueError("--holdout needs one label per example (not a text corpus: it has a validation "
                         "part of its own)")
    if not 0 < n < len(labels):
        raise ValueError(f"--holdout {n}: hold out between 1 and {len(labels) - 1} of the {len(labels)} "
                         f"training examples")
    held = balanced_sample(labels, n, seed=HOLDOUT_SEED)
    kept = torch.ones(len(labels), dtype=torch.bool)
    kept[held] = False
    rest = kept.nonzero().squeeze(1)
    if isinstance(train, tuple):
        return (train[0][rest], train[1][rest]), (train[0][held], train[1][held])
    return Subset(train, rest.tolist()), Subset(train, held.tolist())


def grid_config(cfg: TrainConfig, lr: float, n_holdout: int, grid: Path) -> TrainConfig:
    """`cfg` at rate `lr`, trained in GRID/lrX and scored on `n_holdout` held-out training examples (its
    config says so in `extra`)."""
    return replace(cfg, lr=lr, out_dir=str(Path(grid) / f"lr{lr:g}"),
                   extra={**cfg.extra, "test set": f"{n_holdout} examples held out of the training set "
                          f"(seed {HOLDOUT_SEED}): test_* are validation scores"})


def best_lr(scores: dict[float, float]) -> float:
    """The rate with the best held-out accuracy; the lowest rate on a tie."""
    return max(sorted(scores), key=lambda lr: scores[lr])


def choose_lr(cfg: TrainConfig, lrs: list[float], train: TensorPair | Dataset, n_holdout: int, grid: Path, *,
              resume: bool = False, overwrite: bool = False, progress: bool = True) -> tuple[float, dict]:
    """Trains `cfg` (its rule, seed and budget) once per rate in `lrs` into GRID/lrX on `train` less
    `n_holdout` examples (`grid_config`), scores each on the held-out examples, and returns `best_lr` of
    the final held-out accuracies and {rate: that accuracy}."""
    fit_part, held_out = holdout(train, n_holdout)
    scores = {}
    for lr in lrs:
        history = fit(grid_config(cfg, lr, n_holdout, grid), fit_part, held_out, resume=resume,
                      overwrite=overwrite, progress=progress)
        scores[lr] = history[-1]["test_accuracy"]
    return best_lr(scores), scores
