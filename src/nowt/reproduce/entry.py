"""What a reproduction is: an `Entry` of the registry, of one of two kinds.

- `Reproduction`, a table of runs: every registered row is one TrainConfig run per seed (`SEEDS`), each
  trained by `nowt.train.fit` into `OUT/ROW/seedS` with resume on (an interrupted reproduction continues
  where it stopped; a finished run is read, never trained again), reported as the seeds' mean ± std beside
  the published number with a verdict from `nowt.reproduce.verdicts.verdict`. Rows added after a
  registered row's result was seen are `explorations`: tabulated apart, never given a verdict. Runs whose
  rule, model or data this install lacks are reported as skipped, with the reason. `gather` trains
  nothing: it reads the runs' logs (metrics.jsonl, config.json) from the folder, e.g. a committed results
  folder whose checkpoints are gone.
- `Analysis`: a function that computes its own results (simulations, several seeds, claims checked).

Both write `RESULTS.md` (and figures) into the output folder with the command, date and machine.
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from nowt import distributed
from nowt.models import MODELS
from nowt.provenance import machine
from nowt.report import collapse_state, load_run, mean_std, report_runs
from nowt.reproduce.gathering import gathered, same_data_as_seeds, saved_holdout
from nowt.reproduce.verdicts import BAND, NO_PAPER_RULE, results_table, verdict, verdict_rule
from nowt.rules import list_rules
from nowt.train import TrainConfig, fit
from nowt.train.factories import load_data
from nowt.train.select import best_lr, grid_config, selection_data, shown

#: metric name -> how to read it from a run's history
METRICS = {
    "best_test_accuracy": lambda h: max(r["test_accuracy"] for r in h),
    "final_test_accuracy": lambda h: h[-1]["test_accuracy"],
    "best_test_error": lambda h: min(r["test_top1_error"] for r in h),
    "final_test_error": lambda h: h[-1]["test_top1_error"],
    "final_train_error": lambda h: 100.0 - h[-1]["train_accuracy"],
    "best_top5_error": lambda h: min(r["test_top5_error"] for r in h),
    # the epoch a paper's validation split picks (the first of its best): needs a run with --validation
    "test_error_at_best_validation": lambda h: max(h, key=lambda r: r["val_accuracy"])["test_top1_error"],
    "final_test_bpc": lambda h: h[-1]["test_bpc"],
    "output_angle": lambda h: _angle(h, -1),
    "hidden_angle": lambda h: _angle(h, 0),
}


#: The seeds every registered row runs: a verdict needs a spread.
SEEDS = (0, 1, 2)


def _angle(history: list[dict], layer: int) -> float:
    angles = list(history[-1]["weight_angles"].values())
    return angles[layer] if angles else math.nan


def provenance(command: str) -> str:
    """The markdown lines every RESULTS.md starts with: command, date, machine, torch."""
    return (f"Command: `{command}`  \nDate: {datetime.date.today().isoformat()}. Machine: {machine()}. "
            f"torch {torch.__version__}.\n")


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One reproduction: the paper, what of it is reproduced (`table`) and notes on how ours differs."""

    name: str
    paper: str
    table: str
    notes: str = ""

    def describe(self) -> str:
        return f"{self.name}: {self.paper}\n  {self.table}"

    def command(self, quick: bool) -> str:
        return f"nowt reproduce {self.name}{' --quick' if quick else ''}"

    def run(self, out_dir: str | os.PathLike, *, quick: bool = False, only: list[str] | None = None,
            progress: bool = True, command: str | None = None, gather: bool = False, **overrides) -> Path:
        """Runs the reproduction into `out_dir` (with `gather`, reads the runs already there and trains
        nothing); returns the path of the RESULTS.md written there."""
        raise NotImplementedError


@dataclass(frozen=True, kw_only=True)
class Reproduction(Entry):
    """A table of runs: `config` shared by every run, `runs` label -> TrainConfig overrides (at least the
    rule), `published` label -> {metric: value} (names in METRICS), `quick` overrides for --quick."""

    config: dict
    runs: dict[str, dict]
    published: dict[str, dict[str, float]]
    quick: dict = field(default_factory=dict)
    #: out_dir -> extra markdown sections (e.g. our curves against the authors' per-epoch logs)
    compare: Callable[[Path], list[str]] | None = None
    #: learning-curve and alignment figures with a line or column per run; a table of many runs turns them
    #: off and draws its own summary in `compare`
    run_figures: bool = True
    #: seeds of every registered row (--quick and the explorations run the first alone)
    seeds: tuple[int, ...] = SEEDS
    #: the verdict's tolerance (see `verdict`), stated per paper
    band: dict[str, float] = field(default_factory=lambda: dict(BAND))
    #: a learning rate per row chosen fairly (`nowt.train.select`): every row trains its first seed once per
    #: rate on the training set less `holdout` examples (0: a tenth) and its seeds take the rate with the
    #: best held-out accuracy; () keeps each row's own lr
    lr_grid: tuple[float, ...] = ()
    holdout: int = 0
    #: label -> why and when: rows added or changed after a registered row's result was seen. They are
    #: tabulated apart and never get a verdict; the registered rows stay as they were.
    explorations: dict[str, str] = field(default_factory=dict)
    #: metric -> why it is tabulated without a verdict: a number the paper states that ours does not measure
    #: (another quantity, or an epoch picked on the test set); it is never counted as a match or a miss
    unjudged: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        lines = [super().describe()]
        for label in self.runs:
            numbers = ", ".join(f"{m} {v:g}" for m, v in self.published.get(label, {}).items()) or "no number"
            kind = " (exploration)" if label in self.explorations else ""
            lines.append(f"  {label:<20} {numbers}{kind}")
        lines.append(f"  seeds {', '.join(map(str, self.seeds))} a row")
        quick = ", ".join(f"{k}={v}" for k, v in self.quick.items())
        lines.append(f"  full: {self.config.get('epochs')} epochs; --quick: {quick}")
        return "\n".join(lines)

    def run(self, out_dir, *, quick=False, only=None, progress=True, command=None, gather=False,
            seeds=None, **overrides) -> Path:
        if gather and not Path(out_dir).is_dir():
            raise ValueError(f"--gather reads the runs in {out_dir}, which does not exist: nothing to gather")
        rows = run_reproduction(self, quick=quick, out_dir=out_dir, only=only, progress=progress,
                                gather=gather, seeds=seeds, **overrides)
        path = Path(out_dir) / "RESULTS.md"
        distributed.barrier()  # the ranks end together, rank 0's files written
        if distributed.world()[0] != 0:  # under torchrun rank 0 alone gathers the runs and writes
            return path
        if only:  # trained a subset: the table still holds every row (the others as their runs stand)
            rows = run_reproduction(self, quick=quick, out_dir=out_dir, progress=progress, gather=True,
                                    **overrides)
        ran = sorted({d for r in rows for d in r["dirs"]})
        registered = [r for r in rows if r["run"] not in self.explorations]
        explored = [r for r in rows if r["run"] in self.explorations]
        parts = [f"# {self.name}{' (quick)' if quick else ''}", self.paper, f"{self.table}. {self.notes}",
                 provenance(command or self.command(quick)), "## Registered rows"]
        published = any(r["published"] == r["published"] for r in registered)  # nan: no paper number
        parts += [verdict_rule(self.band) if published else NO_PAPER_RULE, results_table(registered)]
        if self.unjudged:
            parts.append("Tabulated without a verdict: " + "; ".join(
                f"**{metric}**: {why}" for metric, why in self.unjudged.items()) + ".")
        if (Path(out_dir) / "EXPLORATIONS.md").is_file():
            parts.append("Explorations, probes and the history of these runs (none a verdict): "
                         "[EXPLORATIONS.md](EXPLORATIONS.md).")
        if explored:
            parts += ["## Explorations (not verdicts)",
                      "Rows added or changed after a registered row's result was seen: "
                      + "; ".join(f"**{label}**: {why}" for label, why in self.explorations.items()),
                      results_table(explored, verdicts=False)]
        if ran:
            parts += ["## Our runs", *report_runs(ran, out_dir, figures=self.run_figures)]
        if self.compare is not None:
            parts += self.compare(Path(out_dir))
        path.parent.mkdir(parents=True, exist_ok=True)  # no run made it where every row was skipped
        path.write_text("\n\n".join(p.strip("\n") for p in parts) + "\n")
        return path


@dataclass(frozen=True, kw_only=True)
class Analysis(Entry):
    """A reproduction that computes its own results: `function(out_dir, quick=, progress=, command=,
    **overrides)` writes RESULTS.md and its figures into out_dir."""

    function: Callable[..., dict]

    def run(self, out_dir, *, quick=False, only=None, progress=True, command=None, gather=False,
            seeds=None, **overrides) -> Path:
        accepted = inspect.signature(self.function).parameters
        if distributed.launched_by_torchrun():  # every rank would compute it all and write the same files
            raise ValueError(f"{self.name} is an analysis, computed in one process: run it without torchrun")
        if only or seeds or (gather and "gather" not in accepted):
            raise ValueError(f"{self.name} is an analysis: it has no runs to pick (--runs, --seeds) or to "
                             f"gather (--gather)")
        if gather:  # a function that takes `gather` rebuilds its results from the raw data it wrote
            overrides["gather"] = True
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise ValueError(f"{self.name} takes no {', '.join(unknown)}")
        self.function(out_dir, quick=quick, progress=progress, command=command or self.command(quick),
                      **overrides)
        return Path(out_dir) / "RESULTS.md"


def run_config(repro: Reproduction, label: str, quick: bool, out_dir: str | os.PathLike,
               seed: int | None = None) -> TrainConfig:
    """The TrainConfig of row `label` with `seed` (default the row's first), trained in OUT/label/seedS."""
    seed = repro.seeds[0] if seed is None else seed
    values = {**repro.config, **repro.runs[label], **(repro.quick if quick else {}), "seed": seed}
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"reproduction {repro.name!r} run {label!r} sets unknown fields {sorted(unknown)}")
    return TrainConfig(**values, out_dir=str(seed_dir(out_dir, label, seed)))


def seed_dir(out_dir: str | os.PathLike, label: str, seed: int) -> Path:
    """The one seed-folder layout (as `nowt compare --seeds`): OUT/LABEL/seedS."""
    return Path(out_dir) / label / f"seed{seed}"


def seed_histories(out_dir: str | os.PathLike, label: str) -> list[list[dict]]:
    """The per-epoch records of row `label`'s registered seeds that have finished (OUT/LABEL/seedS): a run
    still going, or killed, is not a seed's result."""
    runs = [load_run(d) for s in SEEDS if ((d := seed_dir(out_dir, label, s)) / "metrics.jsonl").is_file()]
    return [r.history for r in runs if r.ended()]


def known_models() -> set[str]:
    """Every model name `nowt train --model` accepts (the one registry; the Bartunov networks are in it)."""
    return set(MODELS)


def missing_piece(cfg: TrainConfig) -> str | None:
    """Why this install cannot run `cfg`, or None when it can."""
    if cfg.rule not in list_rules():  # target propagation's names are registered there too
        return f"rule {cfg.rule!r} not in this install"
    if cfg.model not in known_models():
        return f"model {cfg.model!r} not in this install"
    return None


def run_reproduction(repro: Reproduction, *, quick: bool = False, out_dir: str | os.PathLike,
                     only: list[str] | None = None, progress: bool = True, gather: bool = False,
                     seeds: list[int] | None = None, **overrides) -> list[dict]:
    """Trains every run of `repro` (or the rows in `only`, the seeds in `seeds`) and returns one row per
    table row and published metric: {run, metric, published, ours (the finished seeds' mean), std, values,
    seeds (finished), difference, verdict, epochs, status, dirs, collapsed (finished seeds whose output
    collapsed), diverged (seeds that diverged: ended, with no number)}. Seeds not asked for are read from
    their folders when there (as `gather` reads every seed), so the table shows every finished seed; a run
    that has not finished is listed in the status and left out of the mean. `overrides` (TrainConfig
    fields, e.g. data_dir, device) apply to every run."""
    labels = only or list(repro.runs)
    unknown = [label for label in labels if label not in repro.runs]
    if unknown:
        raise ValueError(f"{repro.name} has no run(s) {unknown}; its runs: {', '.join(repro.runs)}")
    bad = sorted(set(seeds or ()) - set(repro.seeds))
    if bad:
        raise ValueError(f"{repro.name} registers seeds {', '.join(map(str, repro.seeds))}; not {bad}")
    if seeds and gather:
        raise ValueError("--gather trains nothing: --seeds (the seeds to train) would not apply; drop it")
    ran = sorted({s for label in labels for s in seeds_run(repro, label, quick)})
    idle = sorted(set(seeds or ()) - set(ran))
    if idle:  # nothing would train them: the run would end as if it had
        kind = "is an exploration, which runs" if len(labels) == 1 else "are explorations, which run"
        why = ("--quick runs the first seed alone" if quick else
               f"{', '.join(labels)} {kind} the first seed alone")
        given, picked = ",".join(map(str, seeds or ())), f"{repro.name}'s {'picked ' if only else ''}rows"
        raise ValueError(f"--seeds {given}: {picked} run only seed {', '.join(map(str, ran))}: {why}; "
                         f"nothing would train seed {', '.join(map(str, idle))}")
    rows = []
    for label in labels:
        registered = seeds_run(repro, label, quick)
        finished, notes, dirs, status, collapsed, diverged = {}, [], [], None, [], []
        prints: dict[int, dict] = {}  # the data each seed trained on
        lr, grid_note = None, ""
        if repro.lr_grid and not quick:
            lr, grid_note = _grid_choice(repro, label, out_dir, gather, progress, overrides)
            if lr is None:
                status = grid_note
        for seed in registered if status is None else ():
            cfg = run_config(repro, label, quick, out_dir, seed)
            for key, value in overrides.items():
                setattr(cfg, key, value)
            if lr is not None:
                cfg.lr = lr
            status = missing_piece(cfg)
            if status is not None:
                break
            history, state = gathered(cfg)
            wanted = not gather and (seeds is None or seed in seeds)
            if state.startswith(("not run", "unfinished")) and wanted:
                try:
                    history, state = fit(cfg, resume=True, progress=progress), "ok"
                except FileNotFoundError as e:  # the dataset is not here: report it and go on
                    status = f"skipped: {e}"
                    break
                except FloatingPointError:  # an outcome of the recipe: tabulated, the other seeds go on
                    distributed.barrier()  # rank 0 has marked the run diverged before the others read it
                    history, state = gathered(cfg)
                    if not state.startswith("diverged"):  # unmarked (not the training loop's): not a result
                        raise
            if history:
                assert cfg.out_dir is not None  # a reproduction's runs have their folders
                dirs.append(cfg.out_dir)
                same_data_as_seeds(label, seed, Path(cfg.out_dir), prints)
            if state == "ok":
                assert history is not None  # an ended run's
                finished[seed] = history
                if collapse := collapse_state(history):  # in the mean, and said beside it
                    notes.append(f"seed {seed}: {collapse}")
                    collapsed.append(seed)
            else:
                notes.append(f"seed {seed}: {state}")
                if state.startswith("diverged"):
                    diverged.append(seed)
        if status is None:
            status = grid_note + f"{len(finished)} of {len(registered)} seeds" + (
                f" ({'; '.join(notes)})" if notes else "")
        for metric, value in table_metrics(repro, label).items():
            values = [METRICS[metric](h) for h in finished.values()]
            mean, std = mean_std(values)
            std = std if len(values) > 1 else math.nan  # one seed: no spread
            early = 0 < len(values) < len(registered) - len(diverged) and value == value
            judged = verdict(mean, value, repro.band, metric, diverged) + (" (provisional)" if early else "")
            unjudged = metric in repro.unjudged and value == value  # a published number, not one of ours
            rows.append({"run": label, "metric": metric, "published": value, "ours": mean, "std": std,
                         "values": values, "seeds": list(finished), "difference": mean - value,
                         "verdict": "no verdict (see the notes)" if unjudged else judged,
                         "epochs": [len(h) for h in finished.values()], "status": status, "dirs": dirs,
                         "collapsed": collapsed, "diverged": diverged})
    return rows


def seeds_run(repro: Reproduction, label: str, quick: bool) -> tuple[int, ...]:
    """The seeds row `label` runs: the registered ones, or the first alone under --quick and for an
    exploration (a lead to follow, not a verdict)."""
    return repro.seeds[:1] if quick or label in repro.explorations else repro.seeds


def table_metrics(repro: Reproduction, label: str) -> dict[str, float]:
    """{metric: published value} that row `label`'s table reports: the paper's, or, for a row without one,
    the last epoch's test accuracy (nan: no number to meet): no paper picks that epoch on the test set."""
    return repro.published.get(label) or {"final_test_accuracy": math.nan}


def _grid_choice(repro: Reproduction, label: str, out_dir: str | os.PathLike, gather: bool, progress: bool,
                 overrides: dict) -> tuple[float | None, str]:
    """Row `label`'s rate from `repro.lr_grid`, chosen on held-out training examples (`nowt.train.select`)
    with its first seed in OUT/LABEL/lr-grid/lrX (trained unless `gather`), and a note for its status; None
    and why while a grid run is missing."""
    lead = run_config(repro, label, False, out_dir)
    for key, value in overrides.items():
        setattr(lead, key, value)
    missing = missing_piece(lead)
    if missing is not None:
        return None, missing
    fit_part = held_out = how = None
    records = {}
    for rate in repro.lr_grid:
        if how is None:  # the held-out part needs the data (its size, or a corpus's validation part)
            try:
                fit_part, held_out, how = selection_data(load_data(lead), repro.holdout)
            except FileNotFoundError as e:
                # a gather reads the runs alone: without the data here, the grid runs say what was held out
                how = saved_holdout(seed_dir(out_dir, label, 0).parent / "lr-grid") if gather else None
                if how is None:
                    return None, f"skipped: {e}"
        cfg = grid_config(lead, rate, how, seed_dir(out_dir, label, 0).parent / "lr-grid")
        history, state = gathered(cfg)
        if state != "ok" and not gather:
            history, state = fit(cfg, fit_part, held_out, resume=True, progress=progress,
                                 data_from_cfg=True), "ok"
        if state != "ok":
            return None, f"lr grid: {rate:g} {state}"
        assert history is not None  # an ended run's
        records[rate] = history[-1]
    chosen = best_lr(records)
    grid = ", ".join(f"{rate:g}: {shown(r)}" for rate, r in records.items())
    return chosen, f"lr {chosen:g} (held out: {grid}); "
