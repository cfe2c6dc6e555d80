"""Akrout, Wilson, Humphreys, Lillicrap, Tweed 2019, Deep Learning without Weight Transport (WM, KP).

The official fully connected runs (MNIST 784-500-10, CIFAR-10 3072-1000-10) with their published final and
best test accuracies and B-W angles at epoch 400, and the ImageNet ResNet recipe (table not readable in our
copy of the paper, so no published numbers).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from nowt.figures import figure, save, style
from nowt.report import markdown_table, read_metrics
from nowt.reproduce.entry import Reproduction, seed_dir

PAPER = "Akrout, Wilson, Humphreys, Lillicrap, Tweed 2019, Deep Learning without Weight Transport"

#: The official code's recipe, point by point (shared/papers.md): pixels / 255, batches of 128 in dataset
#: order (468 a MNIST epoch), sigmoid hidden and output units with sigmoid cross-entropy, W, b and B from
#: N(0, 1/(fan_in + fan_out)), plain SGD at a mean-gradient step for W and 1/128 of it for b.
_FC = dict(model="mlp", activation="sigmoid", loss="bce", init="normal_fan_avg", optimizer="sgd",
           momentum=0.0, batch_size=128, lr_schedule="constant", epochs=400, standardize=False,
           shuffle=False, drop_last=True, bias_lr_scale=1 / 128)
#: The official weight mirror: B += 0.01 x y^T with x = 0.1 (U[0,1) - 0.5) of 128 samples and
#: y = sigmoid(W x + b), after every batch and 468 times before the first; no decay, no normalisation.
OFFICIAL_MIRROR = dict(mirror_every=1, mirror_steps=1, mirror_batch=128, mirror_warmup=468,
                       mirror_warmup_batch=128, mirror_noise="uniform", mirror_noise_std=0.1 / 12 ** 0.5,
                       mirror_activation="sigmoid", mirror_normalize=False, mirror_lr=0.01, mirror_decay=0.0)
_RULES = {"bp": {"rule": "bp", "lr": 0.2}, "fa": {"rule": "fa", "lr": 0.2},
          "wm": {"rule": "wm", "lr": 0.05, **OFFICIAL_MIRROR}, "kp": {"rule": "kp", "lr": 0.3}}
_NOTES = ("The official recipe as the authors' numpy code runs it (shared/papers.md), through public options "
          "of nowt: --no-standardize --no-shuffle --drop-last --bias-lr-scale 0.0078125, sigmoid units, "
          "sigmoid cross-entropy, normal_fan_avg init, plain SGD; WM with the official mirror options. Our "
          "angles are between each layer's B and W; theirs are layer_0 (hidden) and layer_1 (output).")


#: Where the authors' per-epoch logs are: a clone of their repository makrout/Deep-Learning-without-Weight-
#: Transport (experiments/<dataset>/<rule>-V0/results.json). They are the authors' files: nowt ships none.
LOGS_ENV = "NOWT_AKROUT_LOGS"


def official_log(root: Path, dataset: str, rule: str) -> list[dict] | None:
    """The authors' per-epoch record of one run: test accuracy, B-W angles (hidden, output) where logged."""
    path = root / "experiments" / dataset / f"{rule}-V0" / "results.json"
    if not path.is_file():
        return None
    epochs = json.loads(path.read_text())
    ordered = sorted(epochs.items(), key=lambda kv: int(kv[0].replace("epoch", "").strip("_")))
    return [{"test_accuracy": e["test_accuracy"],
             "angles": [e["weight_angles"][k] for k in sorted(e.get("weight_angles", {}))]}
            for _, e in ordered]


SECTION = "## Against the authors' per-epoch logs"
KEPT_NOTE = (f"(Kept as the last gather with the authors' logs wrote it: {LOGS_ENV} was not set at the "
             "latest gather.)")


def _kept_section(results: Path) -> str | None:
    """The comparison section of an earlier RESULTS.md, if it has one with numbers."""
    if not results.is_file() or SECTION not in (text := results.read_text()):
        return None
    section = SECTION + text.split(SECTION, 1)[1].split("\n## ", 1)[0].rstrip("\n")
    return section if "| run |" in section else None


def _ours(run_dir: Path) -> list[dict] | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    history = read_metrics(path)
    return [{"test_accuracy": r["test_accuracy"], "angles": list(r["weight_angles"].values())}
            for r in history]


def compare_with_official(dataset: str):
    """A `Reproduction.compare` hook: with $NOWT_AKROUT_LOGS set, a table of our per-epoch test accuracy and
    angles against the authors' logs (mean gap over epochs 1-5, gap at the last epoch both have) and a figure
    of our curves drawn over theirs."""

    def compare(out_dir: Path) -> list[str]:
        root = os.environ.get(LOGS_ENV)
        if not root:
            # a gather on a machine without the authors' clone must not drop the committed comparison
            kept = _kept_section(out_dir / "RESULTS.md")
            if kept is not None:
                warnings.warn(f"{LOGS_ENV} is not set: the comparison with the authors' logs is kept from "
                              f"{out_dir / 'RESULTS.md'} as it was, not recomputed", stacklevel=2)
                return [kept if KEPT_NOTE in kept else f"{kept}\n\n{KEPT_NOTE}"]
            return [f"{SECTION}\n\nSet {LOGS_ENV} to a clone of the authors' repository to compare our "
                    "curves with their logs."]
        rows, fig_runs = [], []
        for rule in _RULES:
            ours, theirs = _ours(seed_dir(out_dir, rule, 0)), official_log(Path(root), dataset, rule)
            if not ours or not theirs:
                continue
            n = min(len(ours), len(theirs))
            first = min(5, n)
            pairs = zip(ours[:first], theirs[:first], strict=True)
            gap5 = sum(abs(o["test_accuracy"] - t["test_accuracy"]) for o, t in pairs) / first
            last = ours[n - 1]["test_accuracy"] - theirs[n - 1]["test_accuracy"]
            a_ours = ours[n - 1]["angles"] or [math.nan] * 2
            a_theirs = theirs[n - 1]["angles"] or [math.nan] * 2
            angle_gap = max(abs(a - b) for a, b in zip(a_ours[:2], a_theirs[:2], strict=True))
            rows.append([rule, n, gap5, ours[n - 1]["test_accuracy"], theirs[n - 1]["test_accuracy"], last,
                         *a_ours[:2], *a_theirs[:2], angle_gap])
            fig_runs.append((rule, ours[:n], theirs[:n]))
        if not rows:
            return [f"{SECTION}\n\nNo run here has a log under {root}."]
        fig, axes = figure(2, 1, width=6.0)
        for rule, ours, theirs in fig_runs:
            epochs = range(1, len(ours) + 1)
            (line,) = axes[0, 0].plot(epochs, [r["test_accuracy"] for r in ours], label=f"{rule} nowt")
            axes[0, 0].plot(range(1, len(theirs) + 1), [r["test_accuracy"] for r in theirs], ls="--",
                            color=line.get_color(), label=f"{rule} authors")
            if theirs[0]["angles"]:
                for k, ls in ((0, "-"), (1, ":")):
                    which = "hidden" if k == 0 else "output"
                    axes[0, 1].plot(epochs, [r["angles"][k] for r in ours], ls=ls, color=line.get_color(),
                                    label=f"{rule} {which} nowt")
                    axes[0, 1].plot(epochs, [r["angles"][k] for r in theirs], ls=ls, color=line.get_color(),
                                    alpha=0.4)
        style(axes[0, 0], title="test accuracy: nowt (solid) over the authors' logs (dashed)", xscale="log",
              xlabel="epoch", ylabel="%", ylim=(75, 100))
        style(axes[0, 1], title="B-W angle: nowt (dark) over the authors' logs (light)", xscale="log",
              xlabel="epoch", ylabel="degrees")
        save(fig, out_dir / "official_curves.png")
        table = markdown_table(["run", "epochs", "mean abs gap, epochs 1-5 (pp)", "ours, last epoch",
                                "authors, last epoch", "gap (pp)", "ours hidden angle", "ours output angle",
                                "authors hidden angle", "authors output angle", "max angle gap"], rows)
        return [SECTION, "Our seed 0 beside the authors' one run (V0), read "
                f"from their results.json files ({LOGS_ENV}); test accuracy in %, angles in degrees between "
                "B and W.", table,
                "![nowt over the authors' logs](official_curves.png)"]

    return compare


def _fc(name: str, dataset: str, hidden: int, quick: dict, accuracy: dict[str, tuple[float, float]],
        angles: dict[str, tuple[float, float]]) -> Reproduction:
    """An official fully connected run, its published (best, final) test accuracies and (hidden, output)
    B-W angles at epoch 400."""
    published = {run: {"best_test_accuracy": best, "final_test_accuracy": final,
                       **dict(zip(("hidden_angle", "output_angle"), angles.get(run, ()), strict=False))}
                 for run, (best, final) in accuracy.items()}
    title, inputs = {"mnist": ("MNIST", 784), "cifar10": ("CIFAR-10", 3072)}[dataset]
    return Reproduction(name=name, paper=PAPER, table=f"official fully connected runs, {title} "
                        f"{inputs}-{hidden}-10", config=dict(dataset=dataset, hidden=(hidden,), **_FC),
                        runs=_RULES, published=published, quick=quick, notes=_NOTES,
                        compare=compare_with_official(dataset))


ENTRIES = [
    _fc("akrout2019", "mnist", 500, dict(epochs=5),
        {"bp": (98.50, 98.50), "fa": (97.80, 97.80), "wm": (98.49, 98.49), "kp": (98.47, 98.45)},
        {"fa": (89.8, 40.0), "wm": (12.8, 3.8), "kp": (20.0, 3.6)}),
    _fc("akrout2019-cifar10", "cifar10", 1000, dict(epochs=2, train_size=10000),
        {"bp": (51.97, 48.18), "fa": (49.54, 42.96), "wm": (52.40, 46.20), "kp": (50.67, 47.57)},
        {"fa": (90.0, 46.5), "wm": (19.8, 9.7), "kp": (10.1, 2.0)}),
    Reproduction(
        name="akrout2019-imagenet", paper=PAPER, table="ImageNet ResNet-18 / ResNet-50 (recipe)",
        config=dict(dataset="imagenet", optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                    batch_size=256, lr_schedule="step", epochs=90, augment=True, num_workers=8, amp="bf16",
                    channels_last=True),
        runs={f"{arch}-{rule}": {"model": arch, "rule": rule}
              for arch in ("resnet18", "resnet50") for rule in ("bp", "fa", "usf", "wm", "kp")},
        published={}, quick=dict(epochs=1, train_size=2560),
        notes=("The table is not readable in our copy of the paper, so no published numbers are given; the "
               "paper reports WM and KP beating FA and sign symmetry and nearly matching BP. Needs ImageNet "
               "(--data-dir with train/ and val/) and GPUs; the recipe is the standard 90-epoch SGD one.")),
]
