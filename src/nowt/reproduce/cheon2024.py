"""Cheon, Lee, Paik 2024, Pretraining with Random Noise for Fast and Robust Learning without Weight
Transport: a 784-100-10 ReLU network trained by backprop (BP), by feedback alignment (FA), and by FA after
random-noise pretraining (FA+noise), on MNIST and Fashion-MNIST, several seeds; the paper's claims (its
table numbers are not readable in our copy) checked against our numbers.

Writes results.json, RESULTS.md and PNG figures to the output folder; returns the summary dict. Training
goes through `nowt.train` (`build_model`, `make_loader`, `RuleLearner`); the loop here only adds a test
evaluation every `eval_every` steps (the learning curve).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from nowt.data import load_fashion_mnist, load_mnist
from nowt.measures import (
    OOD_KINDS,
    accuracy_and_loss,
    area_under_curve,
    effective_ranks,
    generalization_gap,
    mean_neuron_angles,
    ood_images,
)
from nowt.noise import pretrain_noise
from nowt.report import figure, format_mean_std, markdown_table, mean_std, save, style
from nowt.reproduce.entry import Analysis, provenance
from nowt.train import RuleLearner, TrainConfig, build_model, make_loader

PAPER = ("Cheon, Lee, Paik 2024, Pretraining with Random Noise for Fast and Robust Learning without Weight "
         "Transport")
CONDITIONS = ("bp", "fa", "fa+noise")
COLOURS = {"bp": "black", "fa": "tab:blue", "fa+noise": "tab:red"}
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}
READOUT = "3"  # the readout layer's name in the MLP: the only feedback matrix that carries an error here


@dataclass
class Cheon2024Config:
    hidden: int = 100
    # Noise phase (dataset independent, so run once per seed and reused for every dataset): the defaults of
    # `nowt.pretrain_noise`, the settings that align best in the conditions study (cheon2024-conditions).
    noise_steps: int = 3000
    noise_batch_size: int = 64
    noise_pool: int | None = 6400  # a fixed set of noise examples, trained on pass after pass
    noise_optimizer: str = "sgd"
    noise_lr: float = 0.01
    noise_momentum: float = 0.9
    # Data phase, the same for all three conditions.
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    eval_every: int = 150  # steps between test evaluations (the learning curve)
    train_subset: int | None = None  # first N training images only (quick mode)
    ood: dict[str, tuple[float, ...]] = field(default_factory=lambda: {
        "translate": (2.0, 4.0, 6.0), "rotate": (20.0, 40.0, 60.0), "scale": (0.6, 0.8, 1.25)})

    def train_config(self, condition: str, seed: int) -> TrainConfig:
        """The data phase as a nowt.train config (PyTorch's default init, constant lr, cross-entropy)."""
        return TrainConfig(rule="bp" if condition == "bp" else "fa", model="mlp", hidden=(self.hidden,),
                           activation="relu", epochs=self.epochs, batch_size=self.batch_size,
                           optimizer=self.optimizer, lr=self.lr, momentum=self.momentum,
                           lr_schedule="constant", seed=seed)


QUICK = Cheon2024Config(noise_steps=400, epochs=1, train_subset=6000, eval_every=20)


def _standardiser(train_images: Tensor):
    """Scales images to zero mean and unit variance (train statistics), the scale of the N(0, 1) noise."""
    mean, std = float(train_images.mean()), float(train_images.std())
    return lambda x: (x - mean) / std


def _model(cfg: Cheon2024Config, condition: str, seed: int) -> nn.Module:
    """BP, FA and FA+noise of one seed start from the same forward weights (FA and FA+noise share B)."""
    return build_model(cfg.train_config(condition, seed), (784,), 10)


def _train(model: nn.Module, cfg: Cheon2024Config, condition: str, train, test, seed: int) -> dict:
    """Trains on data, evaluating the test set every `eval_every` steps (and at step 0)."""
    tcfg = cfg.train_config(condition, seed)
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed)
    learner = RuleLearner(model, tcfg, len(loader))
    curve: dict[str, list[float]] = {"step": [], "test_accuracy": [], "angle": []}

    def record(step: int) -> None:
        curve["step"].append(step)
        curve["test_accuracy"].append(accuracy_and_loss(model, *test)[0])
        curve["angle"].append(mean_neuron_angles(model).get(READOUT, math.nan))

    step = 0
    record(step)
    for _ in range(cfg.epochs):
        for x, y in loader:
            learner.train_step(x, y)
            step += 1
            if step % cfg.eval_every == 0:
                record(step)
    if curve["step"][-1] != step:
        record(step)
    return curve


def _noise_phase(cfg: Cheon2024Config, seeds: Sequence[int], log) -> tuple[dict, dict]:
    """FA networks pretrained on noise, once per seed: (seed -> state dict, seed -> noise history)."""
    pretrained, history = {}, {}
    for seed in seeds:
        model = _model(cfg, "fa+noise", seed)
        hist = pretrain_noise(model, (1, 28, 28), steps=cfg.noise_steps, batch_size=cfg.noise_batch_size,
                              pool=cfg.noise_pool, optimizer=cfg.noise_optimizer, lr=cfg.noise_lr,
                              momentum=cfg.noise_momentum, seed=seed, progress=False,
                              log_every=max(cfg.noise_steps // 20, 1))
        pretrained[seed], history[seed] = copy.deepcopy(model.state_dict()), hist
        first, last = hist[0], hist[-1]
        log(f"noise seed {seed}: angle {first['neuron_angles'][READOUT]:.1f} -> "
            f"{last['neuron_angles'][READOUT]:.1f} deg, effective rank W1 "
            f"{first['effective_rank']['1']:.1f} -> {last['effective_rank']['1']:.1f}, "
            f"W2 {first['effective_rank'][READOUT]:.2f} -> {last['effective_rank'][READOUT]:.2f} "
            f"({last['seconds']:.0f}s)")
    return pretrained, history


def _data_phase(cfg: Cheon2024Config, name: str, seeds: Sequence[int], pretrained: dict, log,
                data_dir: str | None = None) -> dict:
    """condition -> seed -> the run's curve and end measures, on dataset `name`."""
    train, test = LOADERS[name]("train", data_dir), LOADERS[name]("test", data_dir)
    if cfg.train_subset:
        train = (train[0][: cfg.train_subset], train[1][: cfg.train_subset])
    normalise = _standardiser(train[0])
    train_n, test_n = (normalise(train[0]), train[1]), (normalise(test[0]), test[1])
    ood_sets = None
    if name == "mnist":  # the transformed test images, made once and shared by every run
        ood_sets = {kind: {str(m): normalise(ood_images(test[0], kind, m)) for m in cfg.ood[kind]}
                    for kind in OOD_KINDS}
    runs: dict[str, dict[int, dict]] = {c: {} for c in CONDITIONS}
    for seed in seeds:
        for cond in CONDITIONS:
            t0 = time.perf_counter()
            model = _model(cfg, cond, seed)
            if cond == "fa+noise":
                model.load_state_dict(pretrained[seed])
            curve = _train(model, cfg, cond, train_n, test_n, seed)
            run = {"curve": curve, "final_test_accuracy": curve["test_accuracy"][-1],
                   "auc": area_under_curve(curve["test_accuracy"], curve["step"]),
                   "gap": generalization_gap(model, train_n, test_n),
                   "effective_rank": effective_ranks(model)}
            if ood_sets is not None:
                run["ood"] = {kind: {m: accuracy_and_loss(model, x, test[1])[0] for m, x in per.items()}
                              for kind, per in ood_sets.items()}
            runs[cond][seed] = run
            log(f"{name} seed {seed} {cond:8s}: test {run['final_test_accuracy']:.2f}%, "
                f"AUC {run['auc']:.2f}, "
                f"gap {run['gap']['accuracy']:.2f} ({time.perf_counter() - t0:.0f}s)")
    return runs


def reproduce_cheon2024(out_dir: str | Path, quick: bool = False, datasets: Sequence[str] = ("mnist",
                        "fashion-mnist"), seeds: Sequence[int] | None = None, *,
                        config: Cheon2024Config | None = None, progress: bool = True,
                        command: str | None = None, data_dir: str | None = None) -> dict:
    """Runs BP, FA and FA+noise for every dataset and seed; writes results.json, RESULTS.md and figures.

    quick: a smoke run (one seed, 400 noise steps, 1 epoch on 6000 images) that takes well under a minute
    of one core; its numbers show the pipeline works, not the paper's claims. `config` overrides both.
    seeds: default (0, 1, 2), or (0,) in quick mode.
    OOD accuracy (translated, rotated, scaled test images) is measured for the MNIST-trained networks.
    data_dir: the folder of the dataset's files (default: where nowt.data looks for each).
    """
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else (0, 1, 2))
    if not datasets or not seeds or any(d not in LOADERS for d in datasets):
        raise ValueError(f"need datasets among {', '.join(LOADERS)} and at least one seed; got "
                         f"{list(datasets)}")
    cfg = config or (QUICK if quick else Cheon2024Config())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    log = print if progress else (lambda *a, **k: None)
    pretrained, noise_history = _noise_phase(cfg, seeds, log)
    runs = {name: _data_phase(cfg, name, seeds, pretrained, log, data_dir) for name in datasets}
    summary = {
        "config": asdict(cfg), "quick": quick, "seeds": list(seeds), "datasets": list(datasets),
        "noise": {str(s): h for s, h in noise_history.items()},
        "runs": {d: {c: {str(s): r for s, r in v.items()} for c, v in dd.items()} for d, dd in runs.items()},
        "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    _plots(summary, out)
    command = command or f"nowt reproduce cheon2024{' --quick' if quick else ''}"
    (out / "RESULTS.md").write_text(_report(summary, command))
    log(f"done in {summary['seconds']:.0f}s; wrote {out / 'RESULTS.md'}")
    return summary


def _band(ax, steps, values: Tensor, colour: str, label: str) -> None:
    """Mean over seeds, with the band from the lowest to the highest seed."""
    ax.plot(steps, values.mean(0), color=colour, label=label)
    ax.fill_between(steps, values.min(0).values, values.max(0).values, color=colour, alpha=0.2)


def _plots(summary: dict, out: Path) -> None:
    fig, ((angle, rank1, rank2),) = figure(3, width=4.3, height=3.6)
    for seed, hist in summary["noise"].items():
        steps = [r["step"] for r in hist]
        angle.plot(steps, [r["neuron_angles"][READOUT] for r in hist], label=f"seed {seed}")
        rank1.plot(steps, [r["effective_rank"]["1"] for r in hist])
        rank2.plot(steps, [r["effective_rank"][READOUT] for r in hist])
    for ax, title in ((angle, "mean per-neuron angle W2^T vs B (deg)"),
                      (rank1, "effective rank W1 (100x784)"), (rank2, "effective rank W2 (10x100)")):
        style(ax, xlabel="noise step", title=title)
    save(fig, out / "noise_pretraining.png")

    for name, runs in summary["runs"].items():
        fig, ((acc, ang),) = figure(2)
        for cond, per_seed in runs.items():
            steps = next(iter(per_seed.values()))["curve"]["step"]
            curves = {k: torch.tensor([r["curve"][k] for r in per_seed.values()], dtype=torch.double)
                      for k in ("test_accuracy", "angle")}
            _band(acc, steps, curves["test_accuracy"], COLOURS[cond], cond)
            if cond != "bp":
                _band(ang, steps, curves["angle"], COLOURS[cond], cond)
        style(acc, xlabel="training step", ylabel="test accuracy (%)", title=f"{name}: learning curves",
              ylim=(max(0.0, acc.get_ylim()[0]), 100))
        style(ang, xlabel="training step", ylabel="degrees", title="mean per-neuron angle W2^T vs B")
        save(fig, out / f"learning_{name}.png")

    if "mnist" in summary["runs"]:
        fig, axes = figure(len(OOD_KINDS), width=4.3, height=3.6)
        for ax, kind in zip(axes[0], OOD_KINDS, strict=True):
            for cond, per_seed in summary["runs"]["mnist"].items():
                mags = list(next(iter(per_seed.values()))["ood"][kind])
                acc = torch.tensor([[r["ood"][kind][m] for m in mags] for r in per_seed.values()])
                ax.errorbar([float(m) for m in mags], acc.mean(0), yerr=acc.std(0) if len(acc) > 1 else None,
                            color=COLOURS[cond], label=cond, marker="o", capsize=3)
            style(ax, xlabel={"translate": "pixels", "rotate": "degrees", "scale": "factor"}[kind],
                  ylabel="test accuracy (%)", title=f"{kind}d MNIST")
        save(fig, out / "ood_mnist.png")


def _verdict(claim: str, holds: int, n: int, numbers: str) -> list[str]:
    return [claim, f"{holds}/{n}", numbers,
            "borne out" if holds == n else ("mixed" if holds > 0 else "**not borne out**")]


def _paired(a: Sequence[float], b: Sequence[float], better) -> int:
    """In how many seeds `better(a, b)` holds."""
    return sum(better(x, y) for x, y in zip(a, b, strict=True))


def _dataset_section(name: str, runs: dict, cfg: dict, n: int, verdicts: list) -> list[str]:
    def get(cond, f):
        return [f(r) for r in runs[cond].values()]

    mean = lambda values: mean_std(values)[0]  # noqa: E731
    rows = [[cond, format_mean_std(get(cond, lambda r: r["final_test_accuracy"])),
             format_mean_std(get(cond, lambda r: r["auc"])),
             format_mean_std(get(cond, lambda r: r["gap"]["accuracy"])),
             format_mean_std(get(cond, lambda r: r["gap"]["loss"]), 3),
             *(["–", "–"] if cond == "bp" else
               [format_mean_std(get(cond, lambda r, i=i: r["curve"]["angle"][i]), 1) for i in (0, -1)])]
            for cond in CONDITIONS]
    auc, fin, gap, first = ({c: get(c, f) for c in CONDITIONS} for f in (
        lambda r: r["auc"], lambda r: r["final_test_accuracy"], lambda r: r["gap"]["accuracy"],
        lambda r: r["curve"]["test_accuracy"][1]))
    lines = [f"## {name}", "", markdown_table(
        ["", "final test acc (%)", "AUC of test acc (%)", "gap: train-test acc (pts)", "gap: test-train loss",
         "angle at start (deg)", "angle at end (deg)"], rows), f"![{name}](learning_{name}.png)", "",
        f"Accuracy after the first evaluation interval ({cfg['eval_every']} steps): "
        + ", ".join(f"{c} {format_mean_std(first[c])}" for c in CONDITIONS), ""]
    distance = {c: [abs(b - x) for x, b in zip(fin[c], fin["bp"], strict=True)] for c in ("fa", "fa+noise")}
    verdicts += [
        _verdict(f"{name}: FA+noise learns faster than FA (AUC)",
                 _paired(auc["fa+noise"], auc["fa"], float.__gt__), n,
                 f"AUC {mean(auc['fa+noise']):.2f} vs {mean(auc['fa']):.2f}"),
        _verdict(f"{name}: FA+noise closer to BP than FA (final accuracy)",
                 _paired(distance["fa+noise"], distance["fa"], float.__lt__), n,
                 f"BP {mean(fin['bp']):.2f}, FA+noise {mean(fin['fa+noise']):.2f}, FA {mean(fin['fa']):.2f}"),
        _verdict(f"{name}: FA+noise has a smaller generalisation gap than FA",
                 _paired(gap["fa+noise"], gap["fa"], float.__lt__), n,
                 f"{mean(gap['fa+noise']):.2f} vs {mean(gap['fa']):.2f} points"),
    ]
    if "ood" not in next(iter(runs["fa"].values())):
        return lines
    columns = [(k, m) for k in OOD_KINDS for m in cfg["ood"][k]]
    lines += ["### Out-of-distribution MNIST (trained on MNIST)", "", markdown_table(
        ["condition", *(f"{k} {m}" for k, m in columns)],
        [[cond, *(format_mean_std(get(cond, lambda r, k=k, m=m: r["ood"][k][str(m)])) for k, m in columns)]
         for cond in CONDITIONS]), "![ood](ood_mnist.png)", ""]
    for kind in OOD_KINDS:
        ood = {c: get(c, lambda r, k=kind: statistics.fmean(r["ood"][k].values())) for c in CONDITIONS}
        verdicts.append(_verdict(
            f"OOD {kind}d MNIST: FA+noise more accurate than FA (mean over magnitudes)",
            _paired(ood["fa+noise"], ood["fa"], float.__gt__), n,
            f"{mean(ood['fa+noise']):.2f} vs {mean(ood['fa']):.2f}%, BP {mean(ood['bp']):.2f}%"))
    return lines


def _report(summary: dict, command: str) -> str:
    cfg, seeds = summary["config"], summary["seeds"]
    n = len(seeds)
    subset = f" on the first {cfg['train_subset']} images" if cfg["train_subset"] else ""
    lines = [
        "# Cheon, Lee & Paik (2024): random-noise pretraining for feedback alignment", "",
        provenance(command),
        f"Wall time: {summary['seconds']:.0f} s, CPU time: {summary['cpu_seconds']:.0f} s.", "",
        f"Setup: 784-{cfg['hidden']}-10 ReLU MLP (PyTorch default init), softmax cross-entropy, {n} seeds "
        f"({', '.join(map(str, seeds))}); inputs standardised with the training set's mean and std.",
        f"Noise phase (FA+noise): {cfg['noise_steps']} steps of batches of {cfg['noise_batch_size']} with "
        f"x ~ N(0, I) and labels uniform on 0..9 independent of x, "
        + (f"drawn once as a pool of {cfg['noise_pool']} examples and trained on pass after pass"
           if cfg.get("noise_pool") else "fresh at every step")
        + f", {cfg['noise_optimizer']} lr {cfg['noise_lr']} momentum {cfg.get('noise_momentum', 0.9)}.",
        f"Data phase (all three): {cfg['epochs']} epoch(s){subset}, batch {cfg['batch_size']}, "
        f"{cfg['optimizer']} lr {cfg['lr']} momentum {cfg['momentum']}, constant lr; "
        f"test accuracy every {cfg['eval_every']} steps. BP, FA and FA+noise of one seed share their initial "
        "forward weights; FA and FA+noise share B.",
        "Angles are the mean over the 100 hidden units of the per-neuron angle between row i of W2^T and "
        "row i of B (the readout layer: the only feedback matrix that carries an error in this network). "
        "AUC is the area under the test-accuracy curve divided by its length in steps (mean accuracy over "
        "training, in %).", "",
    ]
    if summary["quick"]:
        lines += ["**Quick mode: a smoke run. These numbers are too short to judge the paper's claims.**", ""]
    noise = list(summary["noise"].values())
    measures = {"per-neuron angle W2^T vs B (deg)": (lambda r: r["neuron_angles"][READOUT], 1),
                "effective rank W1 (max 100)": (lambda r: r["effective_rank"]["1"], 2),
                "effective rank W2 (max 10)": (lambda r: r["effective_rank"][READOUT], 2)}
    before_after = {label: ([f(h[0]) for h in noise], [f(h[-1]) for h in noise], digits)
                    for label, (f, digits) in measures.items()}
    lines += ["## Noise phase", "", markdown_table(
        ["measure", "before", "after noise"],
        [[label, format_mean_std(a, d), format_mean_std(b, d)] for label, (a, b, d) in before_after.items()]),
        "![noise](noise_pretraining.png)", ""]
    claims = ("alignment falls with noise training (angle)", "effective rank of W1 falls with noise training",
              "effective rank of W2 falls with noise training")
    verdicts = [_verdict(claim, _paired(b, a, float.__lt__), n,
                         f"{mean_std(a)[0]:.2f} -> {mean_std(b)[0]:.2f}")
                for claim, (a, b, _) in zip(claims, before_after.values(), strict=True)]
    for name, runs in summary["runs"].items():
        lines += _dataset_section(name, runs, cfg, n, verdicts)
    lines += [
        "## The paper's claims against our numbers", "",
        "A claim counts as borne out when it holds in every seed (paired by seed); the verdict says nothing "
        "about size, so read it next to the numbers (a difference smaller than the spread across seeds is "
        "no evidence either way).", "",
        markdown_table(["claim", "seeds where it holds", "numbers (means)", "verdict"], verdicts),
        "## Notes on the setup", "",
        "- The noise phase uses `nowt.pretrain_noise`'s defaults, the settings under which noise training "
        "aligns the readout best in `nowt reproduce cheon2024-conditions` (results/cheon2024/conditions/), "
        "where every setting was varied one at a time with 3 seeds and no data seen. A fixed pool of noise "
        "is what aligns: with fresh noise at every step the readout's angle does not fall (the conditions "
        "study: 89.8 -> 92.8 degrees). The first run of this entry (2026-11-23, "
        "results/cheon2024/fresh-noise/) used fresh noise, Adam lr 1e-4, 10,000 steps: 89.9 -> "
        "80.7 degrees.",
        "- The paper's own hyperparameters, initialisation and training lengths are not given in our notes "
        "(/work/shared/papers.md), so this is a reproduction of the protocol, not of its exact numbers.",
        "- The data phase is short (CPU budget): the claims about learning speed concern the early curve, "
        "which it covers; final accuracies are not converged.", "",
    ]
    return "\n".join(lines)


ENTRIES = [
    Analysis(name="cheon2024", paper=PAPER, function=reproduce_cheon2024,
             table=("784-100-10 ReLU on MNIST and Fashion-MNIST, BP vs FA vs FA after noise pretraining, "
                    "several seeds; alignment, effective rank, learning speed, OOD accuracy (the paper's "
                    "table numbers are not readable in our copy: its claims are checked instead)")),
]

# The conditions study (which settings make noise pretraining align) is an entry of this paper too.
from nowt.reproduce.cheon2024_conditions import ENTRIES as _CONDITIONS  # noqa: E402

ENTRIES += _CONDITIONS
