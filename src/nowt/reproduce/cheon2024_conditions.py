"""Cheon et al. 2024: why does fresh noise not align an FA network here? Each condition changes one thing
from the registered noise phase (the paper's protocol, `cheon2024_noise.REGISTERED`: fresh N(0, I) noise
and random labels every batch, 784-100-10 ReLU, He init, softmax cross-entropy, SGD lr 0.01 momentum 0.9
weight decay 0.01, batch 256, 975 steps) and runs with 3 seeds; no data is seen. Reported: the readout's
per-neuron angle between the rows of W^T and B (the paper's measure) at the start, at the end and at its
lowest along the way, and the whole-matrix angle at the end.

Every run is saved as one JSON file, `runs/CONDITION/seedS.json` (its recipe and its angle every 25
steps); the tables are computed from those files, and `--gather` rebuilds RESULTS.md from them without
training. A run whose file holds the same recipe is read, not run again (the command resumes).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from nowt.figures import figure, save, style
from nowt.report import format_mean_std, markdown_table
from nowt.reproduce.cheon2024_noise import REGISTERED, noise_phase, readout_angles, same_recipe
from nowt.reproduce.entry import Analysis, provenance

#: condition -> (what it changes, the change to REGISTERED); fixed before any of them was run (2026-12-03)
CONDITIONS: dict[str, tuple[str, dict]] = {
    "registered": ("the paper's protocol", {}),
    "steps-10000": ("10,000 steps (10x longer)", {"steps": 10000}),
    "pool-6400": ("nowt's pool variant: a fixed set of 6,400 noise examples", {"pool": 6400}),
    "init-torch": ("init: nn.Linear's default for W and B (nowt's default) instead of He", {"init": "torch"}),
    "batchnorm": ("BatchNorm1d after the ReLU (the lab's MLP)", {"batch_norm": True}),
    "no-bias": ("no biases", {"bias": False}),
    "hidden-frozen": ("hidden layer frozen: only the readout learns", {"train_hidden": False}),
    "bce": ("sigmoid outputs, binary cross-entropy on one-hot labels", {"loss": "bce"}),
    "no-weight-decay": ("weight decay 0", {"weight_decay": 0.0}),
    "no-momentum": ("momentum 0", {"momentum": 0.0}),
    "lr-0.1": ("SGD lr 0.1", {"lr": 0.1}),
    "lr-0.001": ("SGD lr 0.001", {"lr": 0.001}),
    "adam-1e-3": ("Adam lr 1e-3 (weight decay 0.01 as L2)", {"optimizer": "adam", "lr": 1e-3}),
    "adam-1e-4": ("Adam lr 1e-4 (weight decay 0.01 as L2)", {"optimizer": "adam", "lr": 1e-4}),
    "batch-64": ("batch 64, 3,900 steps (the same 250,000 images)", {"batch_size": 64, "steps": 3900}),
    "batch-16": ("batch 16, 15,600 steps (the same 250,000 images)", {"batch_size": 16, "steps": 15600}),
    "mean-0.5": ("noise N(0.5, 1)", {"mean": 0.5}),
    "std-0.3": ("noise N(0, 0.3^2) (raw MNIST pixels' std)", {"std": 0.3}),
    "uniform-0-1": (
        "noise U(0, 1) (raw pixel range)",
        {"noise": "uniform", "mean": 0.5, "std": 0.5 / 3**0.5},
    ),
    "depth-3": ("784-100-100-10 (readout and middle layer shown)", {"hidden": (100, 100)}),
}
#: follow-ups, added after the conditions above had run (2026-12-03): what removes the label noise, a larger
#: batch, and whether Adam's fall goes on
FOLLOW_UPS: dict[str, tuple[str, dict]] = {
    "uniform-labels": ("soft uniform targets 1/10 instead of random labels (no label noise)",
                       {"labels": "uniform"}),
    "batch-2048": ("batch 2048, 975 steps (8x the images)", {"batch_size": 2048}),
    "adam-1e-3-steps-10000": ("Adam lr 1e-3, 10,000 steps",
                              {"optimizer": "adam", "lr": 1e-3, "steps": 10000}),
    "uniform-labels-steps-10000": ("soft uniform targets, 10,000 steps",
                                   {"labels": "uniform", "steps": 10000}),
    "readout-x3": ("the readout's initial W x3 (larger initial logits: more output to bring to uniform)",
                   {"readout_scale": 3.0}),
}
CONDITIONS.update(FOLLOW_UPS)
QUICK = ("registered", "pool-6400")


def _path(out: Path, condition: str, seed: int) -> Path:
    return out / "runs" / condition / f"seed{seed}.json"


def _recipe(condition: str, quick: bool):
    recipe = REGISTERED.changed(**CONDITIONS[condition][1])
    return recipe.changed(steps=min(recipe.steps, 100)) if quick else recipe


def _run(out: Path, condition: str, seed: int, quick: bool, gather: bool, log) -> dict | None:
    """The saved record of one run, running it first (unless `gather`) when missing or of another recipe."""
    recipe, path = _recipe(condition, quick), _path(out, condition, seed)
    if path.is_file():
        record = json.loads(path.read_text())
        if same_recipe(record["recipe"], recipe):
            return record
        if gather:
            raise ValueError(f"{path} holds another recipe than {condition!r}'s; rerun without --gather")
    if gather:
        return None
    _, record = noise_phase(recipe, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=None))
    log(
        f"{condition} seed {seed}: {readout_angles(record)[0]:.1f} -> {readout_angles(record)[-1]:.1f} deg "
        f"({record['seconds']:.0f}s)"
    )
    return record


def summarise(records: list[dict]) -> dict:
    """Mean and std over seeds of the readout's angles: start, end, lowest (and where), whole-matrix end;
    for a deeper network also the layer below the readout (per-neuron, end)."""
    angles = [readout_angles(r) for r in records]
    steps = [h["step"] for h in records[0]["history"]]
    lowest = [min(a) for a in angles]
    middle = [list(r["history"][-1]["neuron"].values()) for r in records]
    return {
        "start": [a[0] for a in angles],
        "end": [a[-1] for a in angles],
        "lowest": lowest,
        "lowest_step": [steps[a.index(m)] for a, m in zip(angles, lowest, strict=True)],
        "matrix_end": [readout_angles(r, "matrix")[-1] for r in records],
        "loss_first": [r["history"][1]["loss"] for r in records],
        "loss_end": [r["history"][-1]["loss"] for r in records],
        "below_end": [m[-2] for m in middle] if len(middle[0]) > 1 else [],
        "steps": steps,
        "curves": angles,
    }


def falls(start: list[float], end: list[float]) -> str:
    """ "falls" when the mean drop exceeds the spread (the sum of the two stds over seeds); "rises" for a
    rise beyond it; else "no change"."""
    drop = statistics.fmean(start) - statistics.fmean(end)
    spread = statistics.stdev(start) + statistics.stdev(end) if len(start) > 1 else 0.0
    return (
        f"falls by {drop:.1f}"
        if drop > spread
        else (f"rises by {-drop:.1f}" if -drop > spread else f"no change ({-drop:+.1f}, spread {spread:.1f})")
    )


def reading(summary: dict) -> str:
    """The table read out (computed): the registered row, and every condition whose end angle falls beyond
    the seed spread, lowest first."""
    reg = summary.get("registered")
    fell = sorted((statistics.fmean(s["end"]), c) for c, s in summary.items() if falls(s["start"], s["end"])
                  .startswith("falls"))
    lines = []
    if reg:
        lines.append(f"Registered (the paper's protocol): {format_mean_std(reg['start'], 1)} -> "
                     f"{format_mean_std(reg['end'], 1)} degrees at the end "
                     f"({falls(reg['start'], reg['end'])}); "
                     f"lowest on the way {format_mean_std(reg['lowest'], 1)}.")
    lines.append("End angle falls beyond the seed spread under: " + (", ".join(
        f"{c} ({format_mean_std(summary[c]['end'], 1)})" for _, c in fell) or "none") + ".")
    return " ".join(lines)


def reproduce_conditions(
    out_dir: str | Path,
    *,
    quick: bool = False,
    progress: bool = True,
    command: str = "nowt reproduce cheon2024-conditions",
    seeds: int = 3,
    gather: bool = False,
) -> dict:
    """Runs (or with `gather` reads) every condition's seeds and writes RESULTS.md and conditions.png."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    summary, missing = {}, []
    for condition in QUICK if quick else CONDITIONS:
        records = [_run(out, condition, seed, quick, gather, log) for seed in range(seeds)]
        missing += [f"{condition} seed {s}" for s, r in enumerate(records) if r is None]
        found = [r for r in records if r is not None]
        if found:
            summary[condition] = {**summarise(found), "seeds": [r["seed"] for r in found]}
    rows = [
        [
            c,
            CONDITIONS[c][0] + (" *(follow-up)*" if c in FOLLOW_UPS else ""),
            len(s["seeds"]),
            format_mean_std(s["start"], 1),
            format_mean_std(s["end"], 1),
            format_mean_std(s["lowest"], 1) + f" (step {round(statistics.fmean(s['lowest_step']))})",
            format_mean_std(s["matrix_end"], 1),
            f"{format_mean_std(s['loss_first'], 3)} -> {format_mean_std(s['loss_end'], 3)}"
            + (" (chance here: 10 H(0.1) = 3.251)" if c == "bce" else ""),  # summed over 10 sigmoid outputs
            falls(s["start"], s["end"]),
        ]
        for c, s in summary.items()
    ]
    _plot(summary, out)
    text = "\n\n".join(
        [
            "# Cheon et al. 2024: does fresh noise align an FA network, and what makes it?",
            __doc__.split("\n\n", 1)[1].strip(),
            provenance(command),
            "Readout angles in degrees, mean ± std over seeds (per-neuron: the mean over the 100 hidden "
            "units of the angle between row i of W2^T and row i of B; whole-matrix: between B and W2 as flat "
            "vectors). Verdict: the angle falls (or rises) when the change of the mean exceeds the sum of "
            "the two stds.",
            markdown_table(
                [
                    "condition",
                    "change from the registered recipe",
                    "seeds",
                    "per-neuron: start",
                    "end",
                    "lowest (mean step)",
                    "whole-matrix: end",
                    "noise loss: first 25 steps -> last 25 (chance: ln 10 = 2.303 for cross-entropy)",
                    "start -> end",
                ],
                rows,
            ),
            *(
                [
                    "Middle layer of depth-3 (per-neuron, end): "
                    + format_mean_std(summary["depth-3"]["below_end"], 1)
                ]
                if summary.get("depth-3", {}).get("below_end")
                else []
            ),
            reading(summary),
        "![readout angle during noise training](conditions.png)",
            *([f"Missing (not run yet): {', '.join(missing)}."] if missing else []),
        ]
    )
    (out / "RESULTS.md").write_text(text + "\n")
    return summary


def _plot(summary: dict, out: Path) -> None:
    fig, ((ax,),) = figure(1, width=9, height=5)
    for condition, s in summary.items():
        curves = s["curves"]
        mean = [statistics.fmean(c[i] for c in curves) for i in range(min(map(len, curves)))]
        steps = s["steps"][: len(mean)]
        ax.plot(steps, mean, label=condition, lw=2.5 if condition == "registered" else 1)
    ax.set_xscale("symlog", linthresh=100)
    style(
        ax, xlabel="noise step", ylabel="degrees", title="readout per-neuron angle W2^T vs B, mean over seeds"
    )
    save(fig, out / "conditions.png")


ENTRIES = [
    Analysis(
        name="cheon2024-conditions",
        paper="Cheon, Lee, Paik 2024",
        function=reproduce_conditions,
        table="why fresh noise does (not) align an FA 784-100-10 net: one change at a time from "
        "the paper's protocol, 3 seeds, per-run JSON (--gather rebuilds the table)",
    )
]
