"""What a reproduction is: an `Entry` of the registry, of one of two kinds.

- `Reproduction`, a table of runs: TrainConfig runs, each trained by `nowt.train.fit` into its own directory
  with resume on (an interrupted reproduction continues where it stopped), beside the published numbers.
  Runs whose rule, model or data this install lacks are reported as skipped, with the reason. `gather`
  trains nothing: it reads the runs' logs (metrics.jsonl, config.json) from the folder, e.g. a committed
  results folder whose checkpoints are gone.
- `Analysis`: a function that computes its own results (simulations, several seeds, claims checked).

Both write `RESULTS.md` (and figures) into the output folder with the command, date and machine.
"""

from __future__ import annotations

import datetime
import inspect
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from nowt.models import MODELS
from nowt.report import load_run, markdown_table, report_runs
from nowt.rules import rules
from nowt.train import TrainConfig, fit
from nowt.train.loop import out_of_patience

#: metric name -> how to read it from a run's history
METRICS = {
    "best_test_accuracy": lambda h: max(r["test_accuracy"] for r in h),
    "final_test_accuracy": lambda h: h[-1]["test_accuracy"],
    "best_test_error": lambda h: min(r["test_top1_error"] for r in h),
    "final_test_error": lambda h: h[-1]["test_top1_error"],
    "final_train_error": lambda h: 100.0 - h[-1]["train_accuracy"],
    "best_top5_error": lambda h: min(r["test_top5_error"] for r in h),
    "output_angle": lambda h: _angle(h, -1),
    "hidden_angle": lambda h: _angle(h, 0),
}


def _angle(history: list[dict], layer: int) -> float:
    angles = list(history[-1]["weight_angles"].values())
    return angles[layer] if angles else math.nan


def provenance(command: str) -> str:
    """The markdown lines every RESULTS.md starts with: command, date, machine, torch."""
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    if torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    return (f"Command: `{command}`  \nDate: {datetime.date.today().isoformat()}. Machine: {machine}. "
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

    def describe(self) -> str:
        lines = [super().describe()]
        for label in self.runs:
            numbers = ", ".join(f"{m} {v:g}" for m, v in self.published.get(label, {}).items()) or "no number"
            lines.append(f"  {label:<20} {numbers}")
        quick = ", ".join(f"{k}={v}" for k, v in self.quick.items())
        lines.append(f"  full: {self.config.get('epochs')} epochs; --quick: {quick}")
        return "\n".join(lines)

    def run(self, out_dir, *, quick=False, only=None, progress=True, command=None, gather=False,
            **overrides) -> Path:
        rows = run_reproduction(self, quick=quick, out_dir=out_dir, only=only, progress=progress,
                                gather=gather, **overrides)
        ran = sorted({r["dir"] for r in rows if r["epochs"]})
        parts = [f"# {self.name}{' (quick)' if quick else ''}", self.paper, f"{self.table}. {self.notes}",
                 provenance(command or self.command(quick)), results_table(rows)]
        if ran:
            parts += ["## Our runs", *report_runs(ran, out_dir, figures=self.run_figures)]
        if self.compare is not None:
            parts += self.compare(Path(out_dir))
        path = Path(out_dir) / "RESULTS.md"
        path.write_text("\n\n".join(p.strip("\n") for p in parts) + "\n")
        return path


@dataclass(frozen=True, kw_only=True)
class Analysis(Entry):
    """A reproduction that computes its own results: `function(out_dir, quick=, progress=, command=,
    **overrides)` writes RESULTS.md and its figures into out_dir."""

    function: Callable[..., dict]

    def run(self, out_dir, *, quick=False, only=None, progress=True, command=None, gather=False,
            **overrides) -> Path:
        if only or gather:
            raise ValueError(f"{self.name} is an analysis: it has no runs to pick (--runs) or to gather "
                             f"(--gather)")
        accepted = inspect.signature(self.function).parameters
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            raise ValueError(f"{self.name} takes no {', '.join(unknown)}")
        self.function(out_dir, quick=quick, progress=progress, command=command or self.command(quick),
                      **overrides)
        return Path(out_dir) / "RESULTS.md"


def run_config(repro: Reproduction, label: str, quick: bool, out_dir: str | os.PathLike) -> TrainConfig:
    values = {**repro.config, **repro.runs[label], **(repro.quick if quick else {})}
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"reproduction {repro.name!r} run {label!r} sets unknown fields {sorted(unknown)}")
    return TrainConfig(**values, out_dir=str(Path(out_dir) / label))


def known_models() -> set[str]:
    """Every model name `nowt train --model` accepts (the one registry; the Bartunov networks are in it)."""
    return set(MODELS)


def missing_piece(cfg: TrainConfig) -> str | None:
    """Why this install cannot run `cfg`, or None when it can."""
    if cfg.rule not in rules():  # target propagation's names are registered there too
        return f"rule {cfg.rule!r} not in this install"
    if cfg.model not in known_models():
        return f"model {cfg.model!r} not in this install"
    return None


def run_reproduction(repro: Reproduction, *, quick: bool = False, out_dir: str | os.PathLike,
                     only: list[str] | None = None, progress: bool = True, gather: bool = False,
                     **overrides) -> list[dict]:
    """Trains every run of `repro` (or those in `only`); returns one row per run and published metric:
    {run, metric, published, ours, difference, epochs, status, dir}. `overrides` (TrainConfig fields, e.g.
    data_dir, device) apply to every run. `gather`: train nothing, read each run's log from its folder."""
    labels = only or list(repro.runs)
    unknown = [label for label in labels if label not in repro.runs]
    if unknown:
        raise ValueError(f"{repro.name} has no run(s) {unknown}; its runs: {', '.join(repro.runs)}")
    rows = []
    for label in labels:
        cfg = run_config(repro, label, quick, out_dir)
        for key, value in overrides.items():
            setattr(cfg, key, value)
        status, history = missing_piece(cfg), None
        if status is None and gather:
            history, status = gathered(cfg)
        elif status is None:
            try:
                history = fit(cfg, resume=True, progress=progress)
                status = "ok"
            except FileNotFoundError as e:  # the dataset is not here: report it and go on
                status = f"skipped: {e}"
        published = repro.published.get(label) or {"best_test_accuracy": math.nan}
        for metric, value in published.items():
            ours = METRICS[metric](history) if history else math.nan
            rows.append({"run": label, "metric": metric, "published": value, "ours": ours,
                         "difference": ours - value, "epochs": len(history) if history else 0,
                         "status": status, "dir": cfg.out_dir})
    return rows


def gathered(cfg: TrainConfig) -> tuple[list[dict] | None, str]:
    """The history of `cfg`'s run read from its folder, training nothing, and its status: ok when the run
    ended (its epochs or its patience), else how far it got; a folder of another configuration is refused."""
    try:
        run = load_run(cfg.out_dir)
    except FileNotFoundError:
        return None, "not run (no metrics.jsonl)"
    except ValueError:
        return None, "not run (no epoch yet)"
    differ = cfg.identity_differences(run.config)  # where and how fast a run went are not compared
    if differ:
        raise ValueError(f"run directory {cfg.out_dir} holds a run of another configuration (it differs in "
                         f"{', '.join(differ)})")
    history = run.history
    if len(history) >= cfg.epochs or out_of_patience(history, cfg.patience):
        return history, "ok"
    return history, f"unfinished ({len(history)} of {cfg.epochs} epochs)"


def results_table(rows: list[dict]) -> str:
    keys = ["run", "metric", "published", "ours", "difference", "epochs", "status"]
    header = ["run", "metric", "published", "ours", "ours - published", "epochs", "status"]
    return markdown_table(header, [[r[k] for k in keys] for r in rows])
