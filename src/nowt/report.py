"""Every markdown table and figure nowt writes: `nowt report` / `compare`, and every reproduction.

    nowt report runs/fa runs/bp --out report/

`markdown_table` is the one table writer (figures: `nowt.figures`). A run directory holds what `nowt train
--out DIR` writes: `config.json` and `metrics.jsonl`.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.ticker import FuncFormatter, LogFormatter

from nowt.figures import figure, save, style
from nowt.train.config import not_identity, read_saved_config, saved_defaults
from nowt.train.loop import run_ended
from nowt.train.rundir import data_differences, divergence, recorded_data
from nowt.train.select import VALIDATION_SCORES


def cell(value, digits: int = 2) -> str:
    """A table cell: floats to `digits` decimals (nan as an en dash), everything else as str."""
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """The mean and sample standard deviation (n - 1) of `values`, e.g. one result over seeds: std 0.0 for a
    single value; (nan, nan) for none, or where a value is nan."""
    values = [float(v) for v in values]
    if not values or any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Iterable[float], digits: int = 2) -> str:
    """"m ± s" to `digits` decimals; a single value alone; an en dash for none or where a value is nan (an
    angle a rule does not define)."""
    values = list(values)
    mean, std = mean_std(values)
    if math.isnan(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], digits: int = 2) -> str:
    """A GitHub markdown table, one line per row and a trailing newline; see `cell` for the formatting."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v, digits) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Run:
    name: str
    config: dict
    history: list[dict]
    diverged: dict | None = None  # {"epoch", "message"} where the run ended by diverging (its diverged.json)
    data: dict | None = None  # the fingerprint of the data it trained on (provenance.jsonl), where recorded

    def ended(self) -> bool:
        """Whether the run had ended by its own rule (epochs, patience, plateau halvings) when last logged;
        without a config.json nothing is known of its rule: never."""
        settings = _settings(self)
        return bool(self.config) and run_ended(self.history, settings["epochs"], settings.get("patience"),
                                                  settings.get("lr_schedule", "constant"))

    def summary(self) -> dict[str, Any]:  # numbers, and the run's name and rule
        last = self.history[-1]
        angles = last.get("weight_angles") or {}
        return {
            "run": self.name, "rule": self.config.get("rule", "?"), "epochs": last["epoch"],
            "best_test_accuracy": max(r["test_accuracy"] for r in self.history),
            "final_test_accuracy": last["test_accuracy"],
            "final_train_accuracy": last["train_accuracy"],
            "final_top5_error": last.get("test_top5_error", math.nan),
            "output_angle": list(angles.values())[-1] if angles else math.nan,
            # the median: a run paused (SIGSTOP, a suspended laptop) logs the pause as one epoch's wall time
            "seconds_per_epoch": statistics.median(r["seconds"] for r in self.history),
        }


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> Run:
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no metrics.jsonl "
                                "(made by nowt train --out)")
    history = read_metrics(metrics)
    if not history:
        raise ValueError(f"{metrics} holds no epochs yet")
    config_file = run_dir / "config.json"
    config = read_saved_config(config_file) if config_file.is_file() else {}
    return Run(name or run_dir.name, config, history, divergence(run_dir), recorded_data(run_dir))


#: what every epoch record of a metrics.jsonl holds (the tables and figures read them)
RECORD_KEYS = ("epoch", "test_accuracy")


def read_metrics(path: Path) -> list[dict]:
    """The epoch records of a metrics.jsonl; a line that is not one (truncated, edited, another file) is a
    one-line ValueError naming the file and line."""
    history = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}, line {number}: not a JSON record ({e}); the file is damaged") from None
        missing = [k for k in RECORD_KEYS if k not in record] if isinstance(record, dict) else RECORD_KEYS
        if missing:
            raise ValueError(f"{path}, line {number}: not an epoch record (no {', '.join(missing)})")
        history.append(record)
    return history


def _settings(run: Run) -> dict:
    """The run's configuration; a field it predates counts as its default."""
    return {**saved_defaults(), **run.config}


def recipe(run: Run) -> dict:
    """The run's configuration less its seed, its directories and the options its rule does not have (a run
    saved before such an option's default changed is still a seed of the same recipe); a field it predates
    counts as its default."""
    settings = _settings(run)
    skip = {"seed"} | not_identity(str(settings.get("rule")))
    return {k: v for k, v in settings.items() if k not in skip}


def seed_groups(runs: list[Run]) -> list[list[Run]]:
    """The seeds of one recipe together: runs grouped by configuration less the seed (and directory) and by
    their data (another --data-dir's is another recipe; a run that recorded no fingerprint goes with any)."""
    groups: dict[str, list[list[Run]]] = {}
    for run in runs:
        key = json.dumps(recipe(run), sort_keys=True) if run.config else f"no config.json: {id(run)}"
        parts = groups.setdefault(key, [])
        part = next((p for p in parts if all(r.data is None or run.data is None
                                              or not data_differences(r.data, run.data) for r in p)), None)
        part.append(run) if part is not None else parts.append([run])
    return [part for parts in groups.values() for part in parts]


def group_labels(groups: list[list[Run]]) -> list[str]:
    """A name per seed group: a lone run's own; the folder its seeds share where they are named so (a
    reproduction's "row/seed0", "row/seed1"); else the group's rule, followed by the settings that tell
    it from the other groups of that rule where there are any, e.g. 'dfa (blocks=["blocks.*"],
    dataset=mnist)'."""
    def shown(value) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    def folder(group: list[Run]) -> str | None:  # "row" of "row/seed0", "row/seed1"
        parents = {str(Path(run.name).parent) for run in group}
        return parents.pop() if len(parents) == 1 and "." not in parents else None

    folders = [folder(g) for g in groups]
    labels = []
    for group, name in zip(groups, folders, strict=True):
        rule = group[0].summary()["rule"]
        if len(group) == 1 or name is not None and folders.count(name) == 1:
            labels.append(group[0].name if len(group) == 1 else str(name))
            continue
        twins = [recipe(g[0]) for g in groups if len(g) > 1 and g[0].summary()["rule"] == rule]
        keys = sorted({k for r in twins for k in r if any(t.get(k) != r.get(k) for t in twins)})
        mine = recipe(group[0])
        told = [f"{k}={shown(mine.get(k))}" for k in keys]
        if sum(len(g) > 1 and recipe(g[0]) == mine for g in groups) > 1:  # one recipe on different data
            told.append(f"the data of {group[0].name}")
        labels.append(f"{rule} ({', '.join(told)})" if told else rule)
    return labels


def plot_learning_curves(runs: list[Run], path: Path) -> Path:
    fig, ((err, loss),) = figure(2)
    groups = seed_groups(runs)
    for i, (group, label) in enumerate(zip(groups, group_labels(groups), strict=True)):
        name = label if len(group) == 1 else f"{label}, {len(group)} seeds"  # a recipe's seeds: one colour
        for k, run in enumerate(group):
            epochs = [r["epoch"] for r in run.history]
            style_kw = {"marker": "." if len(epochs) < 30 else None,  # a line through one point draws nothing
                        "color": f"C{i}" if len(groups) <= 10 else colormaps["tab20"](i % 20)}
            err.plot(epochs, [100 - r["test_accuracy"] for r in run.history], **style_kw)
            err.plot(epochs, [100 - r["train_accuracy"] for r in run.history], "--", **style_kw)
            loss.plot(epochs, [r["train_loss"] for r in run.history], label=name if k == 0 else None,
                      **style_kw)
    # A diverged run's loss (1e35 in a BioTorch seed) flattens the rest: clip at 10x the median first loss
    first = statistics.median(run.history[0]["train_loss"] for run in runs)
    top = max(r["train_loss"] for run in runs for r in run.history)
    clipped = math.isfinite(first) and first > 0 and not top <= 10 * first
    style(err, xlabel="epoch", ylabel="error (%)", yscale="log", title="error (solid: test, dashed: train)",
          legend=False, integer_x=True)
    style(loss, xlabel="epoch", ylabel="training loss", yscale="log", legend=False, integer_x=True,
          title="training loss" + (" (axis clipped: a run diverged)" if clipped else ""))
    if clipped:
        loss.set_ylim(top=10 * first)
    for ax in (err, loss):
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if loss.get_legend_handles_labels()[0]:  # below both panels: long row names must not squash the axes
        fig.legend(loc="outside lower center", ncols=min(3, len(groups)), fontsize="small")
    return save(fig, path)


def plot_alignment(runs: list[Run], path: Path) -> Path | None:
    """One column per recipe: B against W (top; target propagation has no B), the rule's update against
    backprop's, and where any run logged it the norm ratio ||B|| / ||W|| (bottom, log scale), a colour per
    layer and a line per seed. None when no run has angles."""
    runs = [r for r in runs if r.history[-1].get("weight_angles") or r.history[-1].get("update_angles")]
    if not runs:
        return None
    groups = seed_groups(runs)
    angles = [a for run in runs for r in run.history for key in ("weight_angles", "update_angles")
              for a in (r.get(key) or {}).values() if not math.isnan(a)]
    top = 95 if max(angles, default=0) <= 95 else 180  # DFA's angles pass 90 early on: never drawn off-axis
    ratios = [v for run in runs for r in run.history for v in (r.get("weight_norm_ratios") or {}).values()
              if math.isfinite(v) and v > 0]  # runs logged before nowt had them, and dtp/bp-only ones: none
    keys = ("weight_angles", "update_angles") + (("weight_norm_ratios",) if ratios else ())
    fig, axes = figure(len(groups), len(keys), width=3.6, height=3.0, sharey="row")
    for col, (group, label) in enumerate(zip(groups, group_labels(groups), strict=True)):
        name = label if len(group) == 1 else f"{label}, {len(group)} seeds"
        drawn = [a for run in group for a in (run.history[-1].get("weight_angles") or {}).values()]
        has_b = any(not math.isnan(a) for a in drawn)  # dfa's B and W differ in shape: nan
        for row, key in enumerate(keys):
            ax = axes[row][col]
            for k, run in enumerate(group):
                epochs = [r["epoch"] for r in run.history]
                marker = "." if len(epochs) < 30 else None  # a line through one point draws nothing
                for i, layer in enumerate(run.history[-1].get(key) or {}):
                    ax.plot(epochs, [r.get(key, {}).get(layer, math.nan) for r in run.history], marker=marker,
                            color=f"C{i % 10}", lw=1.0, label=(layer or "(model)") if k == 0 else None)
            what = ("B vs W", "update vs backprop", "||B|| / ||W||")[row]
            scale = {"yscale": "log"} if row == 2 else {"ylim": (0, top)}
            style(ax, title=f"{name}: {what}", xlabel="epoch", integer_x=True, **scale,
                  ylabel=("norm ratio" if row == 2 else "angle (degrees)") if col == 0 else None,
                  legend=row == (0 if has_b else 1))
            if row == 2:  # plain numbers (0.3, 1), not 3x10^-1
                for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
                    axis(FuncFormatter(lambda v, _: f"{v:g}"))
            if row != 1 and not has_b and not (row == 2 and ax.lines):  # a ratio needs no shared shape
                ax.text(0.5, 0.5, "B and W differ in shape" if drawn else "no feedback weights",
                        transform=ax.transAxes, ha="center", color="0.4")
            if ax.get_legend():
                ax.get_legend().set_title("layer", prop={"size": "small"})  # names like "1", "3" need it
    return save(fig, path)


def summary_table(runs: list[Run]) -> str:
    header = ["run", "rule", "epochs", "best test acc %", "final test acc %", "final train acc %",
              "top-5 err %", "output-layer angle", "s/epoch (median)"]
    keys = ["run", "rule", "epochs", "best_test_accuracy", "final_test_accuracy", "final_train_accuracy",
            "final_top5_error"]
    rows = [[*(s[k] for k in keys), cell(s["output_angle"], 1), f"{s['seconds_per_epoch']:.1f}"]
            for s in (run.summary() | _marked(run) for run in runs)]
    collapses = [collapse_note(run.name, record) for run in runs
                 if (record := next((r for r in run.history if r.get("collapsed")), None)) is not None]
    return markdown_table(header, rows) + ("\n" + "\n".join(collapses) + "\n" if collapses else "")


def _marked(run: Run) -> dict[str, str]:
    """The run's name and epochs, saying where its "test" scores come from when not the test set (an
    --lr-grid run's) and whether it diverged or stopped short of its end (its last epoch no final result)."""
    held_out = str((run.config.get("extra") or {}).get("test set", "")).endswith(VALIDATION_SCORES)
    last = run.history[-1]["epoch"]
    epochs = (f"{last} (diverged in epoch {run.diverged['epoch']})" if run.diverged is not None else
              f"{last} of {_settings(run).get('epochs', '?')} (unfinished)" if run.config and not run.ended()
              else str(last))
    return {"run": run.name + " (test acc: held-out training examples)" * held_out, "epochs": epochs}


def collapse_state(history: list[dict]) -> str | None:
    """How a run's output collapsed (one output for every probe input), if it did: e.g. "collapsed from
    epoch 1 to the end"; None if it never did."""
    epochs = [r["epoch"] for r in history if r.get("collapsed")]
    if not epochs:
        return None
    return (f"collapsed from epoch {epochs[0]} to the end" if history[-1].get("collapsed")
            else f"collapsed at epoch {epochs[0]}, recovered by epoch {history[-1]['epoch']}")


def collapse_note(name: str, record: dict) -> str:
    """A line on a run's first collapsed epoch, with that epoch's mean training loss (a run that blew up
    before it collapsed shows it there: seeds of BioTorch's dfa row logged 1.9e+28)."""
    loss = record.get("train_loss")
    said = f"; that epoch's mean training loss: {loss:.3g}" if isinstance(loss, (int, float)) else ""
    return (f"- {name}: from epoch {record['epoch']} the model gave one output for every probe input (its "
            f"units no longer told inputs apart, e.g. dead ReLUs){said}")


def counted(group: list[Run]) -> tuple[list[Run], list[str]]:
    """The runs of a seed group that its mean counts: those that ended by their own rule (epochs, patience,
    lr halvings) or reached the group's furthest epoch, each seed once; and why each other run was left out
    ("seed 2 stopped at epoch 1 of 2")."""
    furthest = max(run.history[-1]["epoch"] for run in group)
    kept: dict[object, Run] = {}
    left_out = []
    for run in group:
        seed, epoch = _settings(run).get("seed"), run.history[-1]["epoch"]
        if run.diverged is not None:
            left_out.append(f"seed {seed} diverged in epoch {run.diverged['epoch']}")
        elif epoch < furthest and not run.ended():  # a run its patience (or lr rule) stopped has its result
            left_out.append(f"seed {seed} stopped at epoch {epoch} of {_settings(run).get('epochs', '?')}")
        elif seed in kept:
            left_out.append(f"seed {seed} again in {run.name}, counted once")
        else:
            kept[seed] = run
    return list(kept.values()), left_out


def seed_summary_table(runs: list[Run]) -> str:
    """Mean ± std over seeds of the runs whose configurations differ in their seed alone (one row per such
    group, named by its rule, or a run of its own by its name); "" when no two runs are seeds of one
    configuration. Only runs at the group's furthest epoch count, each seed once (see `counted`): the seeds
    cell names the others, e.g. "2 of 3 (seed 2 stopped at epoch 1 of 2)", and says when the counted runs
    had not ended ("3 of 3 (unfinished: epoch 2 of 10)")."""
    groups = seed_groups(runs)
    if all(len(g) < 2 for g in groups):
        return ""
    rows = []
    for group, label in zip(groups, group_labels(groups), strict=True):
        kept, left_out = counted(group)
        # runs at the furthest epoch count (a comparison at one epoch), but a mean of killed runs says so
        unfinished = sorted({f"epoch {r.history[-1]['epoch']} of {_settings(r).get('epochs', '?')}"
                             for r in kept if not r.ended()})
        left_out += [f"unfinished: {', '.join(unfinished)}"] if unfinished else []
        seeds = f"{len(kept)} of {len(group)} ({'; '.join(left_out)})" if left_out else len(kept)
        s = [run.summary() for run in kept]
        rows.append([label, seeds, *(format_mean_std(x[k] for x in s) for k in
                                     ("best_test_accuracy", "final_test_accuracy", "output_angle"))])
    header = ["rule", "seeds", "best test acc %", "final test acc %", "output-layer angle"]
    return markdown_table(header, rows)


def distinct(run_dirs: Iterable[str | os.PathLike]) -> list[str | os.PathLike]:
    """The directories in their order, each once (a directory named twice, or by another path, is one run)."""
    seen: dict[Path, str | os.PathLike] = {}
    for d in run_dirs:
        seen.setdefault(Path(d).resolve(), d)
    return list(seen.values())


def report_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                figures: bool = True) -> list[str]:
    """Draws `curves.png` and `alignment.png` of the runs into `out_dir` (unless not `figures`); returns the
    markdown parts (the summary table and the figure links) for a document there."""
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    run_dirs = distinct(run_dirs)
    runs = [load_run(d) for d in run_dirs]
    names = [r.name for r in runs]
    for i, run in enumerate(runs):  # runs from different parents may share a directory name
        if names.count(run.name) > 1:
            run.name = f"{Path(run_dirs[i]).parent.name}/{run.name}"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = [summary_table(runs)] + [t for t in [seed_summary_table(runs)] if t]
    if not figures:
        return tables
    curves = plot_learning_curves(runs, out / "curves.png")
    parts = [*tables, f"![learning curves]({curves.name})"]
    alignment = plot_alignment(runs, out / "alignment.png")
    if alignment:
        parts.append(f"![per-layer alignment]({alignment.name})")
    return parts


def lr_grid_table(chosen: dict[str, tuple[float, dict[float, dict]]], held_out: str) -> str:
    """`nowt compare --lr-grid`'s choice: per rule, the final held-out score at every rate of the grid
    (accuracy %, or bits per character for text) and the rate chosen."""
    lrs = sorted({lr for _, records in chosen.values() for lr in records})
    text = any("test_bpc" in r for _, records in chosen.values() for r in records.values())
    key = "test_bpc" if text else "test_accuracy"
    rows = [[rule, *(records[lr][key] if lr in records else math.nan for lr in lrs), f"{best:g}"]
            for rule, (best, records) in chosen.items()]
    what = "bits per character, lower is better" if text else "accuracy %"
    return (f"Learning rate per rule, chosen on {held_out} (final held-out {what}, each rule's first seed; "
            f"the test set is not used to choose):\n\n"
            + markdown_table(["rule", *(f"lr {lr:g}" for lr in lrs), "chosen"], rows) + "\n\n")


def write_report(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 title: str = "nowt report", preamble: str = "") -> Path:
    """Writes `out_dir/report.md` with the summary table, `curves.png` and `alignment.png`; returns the
    markdown's path."""
    parts = report_runs(run_dirs, out_dir)
    runs = "Runs: " + ", ".join(f"`{d}`" for d in distinct(run_dirs))
    path = Path(out_dir) / "report.md"
    path.write_text("\n\n".join(p.strip("\n") for p in [f"# {title}", preamble, *parts, runs] if p) + "\n")
    return path
