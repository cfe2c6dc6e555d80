"""Reading a reproduction's run folders, training nothing: a run's history and how it stands (`gathered`),
and how an lr grid's held-out part was made (`saved_holdout`), so a table is rebuilt from logs alone."""

from __future__ import annotations

import json
from pathlib import Path

from nowt.report import load_run
from nowt.train import TrainConfig
from nowt.train.loop import run_ended
from nowt.train.rundir import data_differences, divergence, recorded_data
from nowt.train.select import VALIDATION_SCORES


def saved_holdout(grid: Path) -> str | None:
    """How the held-out part was made, as the first grid run in `grid` recorded it (`grid_config`)."""
    for config in sorted(grid.glob("lr*/config.json")):
        held_out = json.loads(config.read_text()).get("extra", {}).get("test set", "")
        if held_out.endswith(VALIDATION_SCORES):
            return held_out.removesuffix(VALIDATION_SCORES)
    return None


def gathered(cfg: TrainConfig) -> tuple[list[dict] | None, str]:
    """The history of `cfg`'s run read from its folder, training nothing, and its state: "ok" when the run
    ended (its epochs, patience or lr halvings), "diverged in epoch N: ..." when it diverged, else how far it
    got; a folder of another configuration, or of more epochs than the row, is refused."""
    assert cfg.out_dir is not None  # a reproduction's runs have their folders
    diverged = divergence(Path(cfg.out_dir))
    if diverged is not None:  # "loss became inf by step 400 of dfa epoch 1/100", without the advice
        why = diverged["message"].removeprefix("the run diverged: ").split(";")[0]
        diverged_state = f"diverged in epoch {diverged['epoch']}: {why}"
    try:
        run = load_run(cfg.out_dir)
    except (FileNotFoundError, ValueError) as e:
        if diverged is not None:
            return None, diverged_state
        return None, "not run" if isinstance(e, FileNotFoundError) else "not run (no epoch yet)"
    differ = cfg.identity_differences(run.config)  # where and how fast a run went are not compared
    if differ:
        raise ValueError(f"run directory {cfg.out_dir} holds a run of another configuration (it differs in "
                         f"{', '.join(differ)})")
    history = run.history
    if len(history) > cfg.epochs:  # lengthened past the row (a constant lr allows it): not the registered run
        raise ValueError(f"run directory {cfg.out_dir} holds {len(history)} epochs, more than the row's "
                         f"{cfg.epochs}: a longer run is another experiment; move it out")
    if diverged is not None:
        return history, diverged_state
    if run_ended(history, cfg.epochs, cfg.patience, cfg.lr_schedule):
        return history, "ok"
    return history, f"unfinished ({len(history)} of {cfg.epochs} epochs)"




def same_data_as_seeds(label: str, seed: int, run_dir: Path, prints: dict[int, dict]) -> None:
    """Refuses a row whose seeds trained on different data (`--data-dir` is no part of a run's identity, so
    a seed trained elsewhere on other files passes every other check): a mean over them is no mean over
    seeds. Runs from before fingerprints were recorded are not compared."""
    data = recorded_data(run_dir)
    if data is None:
        return
    for other, theirs in prints.items():
        if differ := data_differences(theirs, data):
            raise ValueError(f"row {label}: seed {seed} ({run_dir}) trained on other data than seed {other} "
                             f"({', '.join(sorted(differ))} differ in provenance.jsonl): a mean over them is "
                             f"no mean over seeds; retrain it on the row's data (move its folder away first)")
    prints[seed] = data
