"""Cheon et al. 2024: under which conditions does random-noise pretraining align an FA network?

Each condition changes one thing from a base (784-100-10 ReLU, torch's default init, `nowt.pretrain_noise`
defaults: a pool of 6,400 Gaussian noise examples with random labels, batch 64, SGD lr 0.01 momentum 0.9,
3,000 steps) and is run with several seeds: the readout's B-W angle before and after, the mean per-neuron
angle, and, for the base, fresh noise and no pretraining, the MNIST test accuracy after one epoch of FA
training (the paper's "learns faster" claim). A difference smaller than the spread across seeds is called
no difference.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch import nn

from nowt.convert import convert
from nowt.data import load_mnist
from nowt.metrics import evaluate
from nowt.noise import pretrain_noise
from nowt.report import markdown_table, mean_std
from nowt.reproduce.entry import Analysis, provenance
from nowt.train import RuleLearner, TrainConfig, make_loader, train_epoch

BASE = dict(width=100, depth=1, scale=1.0, pool=6400, steps=3000, optimizer="sgd", lr=0.01)
#: condition label -> what it changes from BASE
CONDITIONS = {
    "base": {}, "fresh noise (pool=None)": {"pool": None}, "pool 640": {"pool": 640},
    "pool 64000": {"pool": 64000}, "300 steps": {"steps": 300}, "1000 steps": {"steps": 1000},
    "width 50": {"width": 50}, "width 400": {"width": 400}, "2 hidden layers": {"depth": 2},
    "3 hidden layers": {"depth": 3}, "init x0.5": {"scale": 0.5}, "init x2": {"scale": 2.0},
    "adam 1e-3": {"optimizer": "adam", "lr": 1e-3}, "adam 1e-4": {"optimizer": "adam", "lr": 1e-4},
}


def _model(width: int, depth: int, scale: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    sizes = [784] + [width] * depth
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(sizes[-1], 10))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return convert(model, "fa", seed=seed)


def _pretrained(condition: dict, seed: int) -> tuple[nn.Module, dict]:
    c = {**BASE, **condition}
    model = _model(c["width"], c["depth"], c["scale"], seed)
    if not c["steps"]:
        return model, {}
    history = pretrain_noise(model, (1, 28, 28), steps=c["steps"], pool=c["pool"], optimizer=c["optimizer"],
                             lr=c["lr"], seed=seed, progress=False, log_every=c["steps"])
    readout = list(history[-1]["weight_angles"])[-1]
    first, last = history[0], history[-1]
    return model, {"before": first["weight_angles"][readout], "after": last["weight_angles"][readout],
                   "neuron": statistics.mean(last["neuron_angles"].values())}


def _one_epoch_accuracy(model: nn.Module, train, test) -> float:
    cfg = TrainConfig(rule="fa", batch_size=64, lr=0.01, lr_schedule="constant", epochs=1)
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=0)
    train_epoch(RuleLearner(model, cfg, len(loader)), loader, "fa", "cpu", progress=False)
    return evaluate(model, make_loader(test, 1000), torch.nn.functional.cross_entropy, "cpu")["accuracy"]


def reproduce_conditions(out_dir: str | Path, *, quick: bool = False, progress: bool = True,
                         command: str = "nowt reproduce cheon2024-conditions", seeds: int = 3) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    quick_ones = ("base", "fresh noise (pool=None)")
    conditions = {k: v for k, v in CONDITIONS.items() if not quick or k in quick_ones}
    rows, summary = [], {}
    for label, change in conditions.items():
        runs = [_pretrained(change, seed)[1] for seed in range(seeds)]
        (b, _), (a, sa), (nrn, _) = (mean_std([r[k] for r in runs]) for k in ("before", "after", "neuron"))
        summary[label] = {"before": b, "after": a, "after_std": sa, "neuron": nrn}
        rows.append([label, b, a, sa, a - b, nrn])
    (xtr, ytr), test = load_mnist("train"), load_mnist("test")
    train = (xtr[:6000], ytr[:6000]) if quick else (xtr, ytr)
    accuracy = {}
    for label, change in (("no pretraining", {"steps": 0}), ("base", {}), ("fresh noise", {"pool": None})):
        accs = [_one_epoch_accuracy(_pretrained(change, seed)[0], train, test) for seed in range(seeds)]
        accuracy[label] = mean_std(accs)
    verdict = _verdict(accuracy)
    text = "\n\n".join([
        "# Cheon et al. 2024: when does noise pretraining align an FA network?", __doc__.split("\n\n", 1)[1],
        provenance(command), f"{seeds} seeds; angles in degrees (mean over seeds; the readout's B-W angle).",
        markdown_table(["condition", "readout angle before", "after", "after, std over seeds", "change",
                        "mean per-neuron angle after"], rows, digits=1),
        f"MNIST test accuracy after one epoch of FA training ({'6,000' if quick else '60,000'} examples, "
        "SGD lr 0.01, batch 64), mean ± std over seeds:",
        markdown_table(["pretraining", "accuracy %", "std"], [[k, m, s] for k, (m, s) in accuracy.items()]),
        verdict])
    (out / "RESULTS.md").write_text(text + "\n")
    return {"angles": summary, "accuracy": accuracy}


def _verdict(accuracy: dict[str, tuple[float, float]]) -> str:
    (m0, s0), (m1, s1) = accuracy["no pretraining"], accuracy["base"]
    gap, spread = m1 - m0, max(s0, s1)
    if abs(gap) <= spread:
        return (f"Learning speed: pretrained {m1:.2f} vs not {m0:.2f} after one epoch, a difference "
                f"({gap:+.2f} pp) within the spread across seeds ({spread:.2f}): not borne out here.")
    return (f"Learning speed: pretrained {m1:.2f} vs not {m0:.2f} after one epoch ({gap:+.2f} pp, spread "
            f"{spread:.2f}): {'borne out' if gap > 0 else 'contradicted'} here.")


ENTRIES = [Analysis(name="cheon2024-conditions", paper="Cheon, Lee, Paik 2024",
                    function=reproduce_conditions,
                    table="conditions under which noise pretraining aligns an FA 784-100-10 net, 3 seeds")]
