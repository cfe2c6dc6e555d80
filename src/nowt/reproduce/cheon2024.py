"""Cheon, Lee, Paik 2024, Pretraining with Random Noise for Fast and Robust Learning without Weight
Transport: BP, FA, and FA after random-noise pretraining (FA+noise) on MNIST and Fashion-MNIST, 3 seeds.

Registered (2026-12-03, fixed before it was run; `cheon2024_noise` states what comes from the paper, what
from the lab's code and what nowt chose):
- noise phase: the paper's protocol, `cheon2024_noise.REGISTERED` (fresh noise and labels every batch).
- data phase, the same for BP, FA and FA+noise (the paper is silent; the lab's code trains data with its
  noise optimizer): SGD lr 0.01, momentum 0.9, weight decay 0.01, batch 256, constant lr; images
  standardised with the training set's mean and std (the scale of the N(0, 1) noise); He init.
- Table 1 (MNIST, Fashion-MNIST): 784-100-10 on the full training set for 50 epochs (our reading of "to
  convergence": the test accuracy changes by less than its seed spread over the last 10 epochs; the report
  shows that change and whether the rule holds, row by row), final test accuracy. The paper's numbers are
  not readable in our copy.
- generalisation gap at the paper's setting: 1,600 training images (160 a class, one fixed draw), depth 3
  (784-100-100-10, depth counted in weight layers as the 784-100-10 net is depth 2), 400 epochs;
  gap = train - test accuracy at the end.
Exploration (not the paper's protocol): FA after nowt's pool variant (`fa+pool`: the registered noise
phase on a fixed set of 6,400 noise examples), in the noise phase and the gap setting.

Every run is saved as one JSON (`runs/SETTING-DATASET/CONDITION/seedS.json`) and read back instead of
rerun; `--gather` rebuilds RESULTS.md from those files alone. Training goes through `nowt.train`'s
`RuleLearner.train_step`, in the noise phase as on data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from nowt.data import load_fashion_mnist, load_mnist
from nowt.noise_measures import (
    OOD_KINDS,
    accuracy_and_loss,
    area_under_curve,
    effective_ranks,
    generalization_gap,
    ood_images,
)
from nowt.reproduce.cheon2024_noise import (
    POOL_VARIANT,
    REGISTERED,
    NoiseRecipe,
    alignment,
    network,
    noise_phase,
)
from nowt.reproduce.cheon2024_report import write_report
from nowt.reproduce.entry import Analysis
from nowt.train import RuleLearner, TrainConfig, make_loader

PAPER = (
    "Cheon, Lee, Paik 2024, Pretraining with Random Noise for Fast and Robust Learning without Weight "
    "Transport"
)
CONDITIONS = ("bp", "fa", "fa+noise", "fa+pool")
REGISTERED_CONDITIONS = ("bp", "fa", "fa+noise")
LOADERS = {"mnist": load_mnist, "fashion-mnist": load_fashion_mnist}


@dataclass
class Cheon2024Config:
    noise: NoiseRecipe = REGISTERED
    pool: int = POOL_VARIANT.pool or 6400  # nowt's pool variant (exploration)
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.01
    #: setting -> hidden widths, training images (None: all), epochs, steps between test evaluations,
    #: conditions run
    settings: dict = field(
        default_factory=lambda: {
            "table1": {
                "hidden": (100,),
                "train_size": None,
                "epochs": 50,
                "eval_every": 50,
                "conditions": REGISTERED_CONDITIONS,
            },
            "gap": {
                "hidden": (100, 100),
                "train_size": 1600,
                "epochs": 400,
                "eval_every": 70,
                "conditions": CONDITIONS,
            },
        }
    )
    ood: dict[str, tuple[float, ...]] = field(
        default_factory=lambda: {
            "translate": (2.0, 4.0, 6.0),
            "rotate": (20.0, 40.0, 60.0),
            "scale": (0.6, 0.8, 1.25),
        }
    )

    def train_config(self, condition: str, seed: int) -> TrainConfig:
        return TrainConfig(
            rule="bp" if condition == "bp" else "fa",
            optimizer=self.optimizer,
            lr=self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            batch_size=self.batch_size,
            lr_schedule="constant",
            epochs=1,
            seed=seed,
        )


QUICK = Cheon2024Config(
    noise=REGISTERED.changed(steps=50),
    settings={
        "table1": {
            "hidden": (100,),
            "train_size": 2000,
            "epochs": 1,
            "eval_every": 4,
            "conditions": REGISTERED_CONDITIONS,
        },
        "gap": {
            "hidden": (100, 100),
            "train_size": 1600,
            "epochs": 3,
            "eval_every": 7,
            "conditions": CONDITIONS,
        },
    },
)


def subset(train: tuple[Tensor, Tensor], size: int | None) -> tuple[Tensor, Tensor]:
    """`size` training images, the same number from every class, one fixed draw (generator seed 0)."""
    if size is None:
        return train
    x, y = train
    classes = int(y.max()) + 1
    if size % classes:
        raise ValueError(f"train_size {size} is not a multiple of the {classes} classes")
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(
        [
            (y == c).nonzero().flatten()[torch.randperm(int((y == c).sum()), generator=g)[: size // classes]]
            for c in range(classes)
        ]
    )
    idx = idx[torch.randperm(len(idx), generator=g)]
    return x[idx], y[idx]


def _pretrained(
    cfg: Cheon2024Config, hidden: tuple[int, ...], pool: bool, seed: int, cache: dict
) -> tuple[nn.Module, dict]:
    """The noise phase of one seed (registered, or nowt's pool variant), run once per process."""
    key = (hidden, pool, seed)
    if key not in cache:
        recipe = cfg.noise.changed(hidden=hidden, pool=cfg.pool if pool else None)
        cache[key] = noise_phase(recipe, seed)
    model, record = cache[key]
    copy = network(
        hidden, "fa", seed, init=cfg.noise.init, batch_norm=cfg.noise.batch_norm, bias=cfg.noise.bias
    )
    copy.load_state_dict(model.state_dict())
    return copy, record


def _train(
    model: nn.Module,
    cfg: Cheon2024Config,
    condition: str,
    seed: int,
    setting: dict,
    train,
    test,
) -> dict:
    """Trains on data for the setting's epochs, evaluating the test set every `eval_every` steps."""
    loader = make_loader(train, cfg.batch_size, shuffle=True, seed=seed)
    learner = RuleLearner(model, cfg.train_config(condition, seed), len(loader))
    curve: dict[str, list] = {"step": [], "test_accuracy": [], "neuron": []}

    def record(step: int) -> None:
        curve["step"].append(step)
        curve["test_accuracy"].append(accuracy_and_loss(model, *test)[0])
        curve["neuron"].append(alignment(model)["neuron"] if condition != "bp" else {})

    step = 0
    record(0)
    model.train()
    for epoch in range(setting["epochs"]):
        loss = torch.zeros(())
        for x, y in loader:
            loss = loss + learner.train_step(x, y)["loss"]  # summed on the device, read once an epoch
            step += 1
            if step % setting["eval_every"] == 0:
                record(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"cheon2024: the {condition} run (seed {seed}) diverged: its loss "
                                     f"became {float(loss)} in epoch {epoch + 1}")
    if curve["step"][-1] != step:
        record(step)
    return curve


def run_path(out: Path, setting: str, dataset: str, condition: str, seed: int) -> Path:
    return out / "runs" / f"{setting}-{dataset}" / condition / f"seed{seed}.json"


def _identity(cfg: Cheon2024Config, setting: str, condition: str) -> dict:
    """What a saved run must match to be read back: the recipe of its noise phase and of its data phase."""
    noise = {"fa+noise": asdict(cfg.noise), "fa+pool": {**asdict(cfg.noise), "pool": cfg.pool}}.get(condition)
    data = {k: getattr(cfg, k) for k in ("batch_size", "optimizer", "lr", "momentum", "weight_decay")}
    return json.loads(json.dumps({"noise": noise, "data": data, "setting": cfg.settings[setting]}))


def _data_run(
    out: Path,
    cfg: Cheon2024Config,
    setting: str,
    dataset: str,
    condition: str,
    seed: int,
    data: dict,
    cache: dict,
    gather: bool,
    log,
) -> dict | None:
    path, identity = run_path(out, setting, dataset, condition, seed), _identity(cfg, setting, condition)
    if path.is_file():
        run = json.loads(path.read_text())
        if run["identity"] == identity:
            return run
        if gather:
            raise ValueError(f"{path} holds a run of another recipe; rerun without --gather")
    if gather:
        return None
    spec = cfg.settings[setting]
    train, test, ood = (
        data[dataset]
        if dataset in data
        else data.setdefault(dataset, _data(dataset, spec["train_size"], cfg, data.get("dir")))
    )
    if condition in ("fa+noise", "fa+pool"):
        model, _ = _pretrained(cfg, tuple(spec["hidden"]), condition == "fa+pool", seed, cache)
    else:
        model = network(
            tuple(spec["hidden"]),
            "bp" if condition == "bp" else "fa",
            seed,
            init=cfg.noise.init,
            batch_norm=cfg.noise.batch_norm,
            bias=cfg.noise.bias,
        )
    curve = _train(model, cfg, condition, seed, spec, train, test)
    run = {
        "identity": identity,
        "setting": setting,
        "dataset": dataset,
        "condition": condition,
        "seed": seed,
        "curve": curve,
        "final_test_accuracy": curve["test_accuracy"][-1],
        "auc": area_under_curve(curve["test_accuracy"], curve["step"]),
        "gap": generalization_gap(model, train, test),
        "effective_rank": effective_ranks(model),
    }
    if ood is not None:
        run["ood"] = {
            kind: {m: accuracy_and_loss(model, x, test[1])[0] for m, x in per.items()}
            for kind, per in ood.items()
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(run))
    log(
        f"{setting} {dataset} seed {seed} {condition:8s}: test {run['final_test_accuracy']:.2f}%, gap "
        f"{run['gap']['accuracy']:.2f}"
    )
    return run


def _data(name: str, size: int | None, cfg: Cheon2024Config, data_dir: str | None):
    train, test = subset(LOADERS[name]("train", data_dir), size), LOADERS[name]("test", data_dir)
    mean, std = float(train[0].mean()), float(train[0].std())
    norm = lambda x: (x - mean) / std  # noqa: E731
    ood = None
    if name == "mnist" and size is None:  # transformed test images, for the full-data MNIST runs
        ood = {
            kind: {str(m): norm(ood_images(test[0], kind, m)) for m in cfg.ood[kind]} for kind in OOD_KINDS
        }
    return (norm(train[0]), train[1]), (norm(test[0]), test[1]), ood


def reproduce_cheon2024(
    out_dir: str | Path,
    quick: bool = False,
    datasets: Sequence[str] = ("mnist", "fashion-mnist"),
    seeds: Sequence[int] | None = None,
    *,
    config: Cheon2024Config | None = None,
    progress: bool = True,
    command: str | None = None,
    data_dir: str | None = None,
    gather: bool = False,
    settings: Sequence[str] | None = None,
) -> dict:
    """Runs (or with `gather` reads) the noise phases and every data run; writes results.json (the
    noise phases), RESULTS.md and figures. quick: one seed, 50 noise steps, a few short data runs.
    settings: which of the config's settings to run (default all; the rest are still read if saved)."""
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else (0, 1, 2))
    cfg = config or (QUICK if quick else Cheon2024Config())
    if not datasets or not seeds or any(d not in LOADERS for d in datasets):
        raise ValueError(f"need datasets among {', '.join(LOADERS)} and a seed; got {list(datasets)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = print if progress else (lambda *a, **k: None)
    cache: dict = {}
    noise_path = out / "runs" / "noise.json"
    saved = json.loads(noise_path.read_text()) if noise_path.is_file() else {}
    noise = {}
    for hidden in sorted({tuple(s["hidden"]) for s in cfg.settings.values()}):
        for pool in (False, True):
            for seed in seeds:
                key = f"{'-'.join(map(str, hidden))}/{'pool' if pool else 'fresh'}/seed{seed}"
                recipe = json.loads(
                    json.dumps(asdict(cfg.noise.changed(hidden=hidden, pool=cfg.pool if pool else None)))
                )
                if key in saved and saved[key]["recipe"] == recipe:
                    noise[key] = saved[key]
                elif not gather:
                    noise[key] = _pretrained(cfg, hidden, pool, seed, cache)[1]
                    first, last = (list(noise[key]["history"][i]["neuron"].values())[-1] for i in (0, -1))
                    log(
                        f"noise {key}: readout {first:.1f} -> {last:.1f} deg"
                    )
    noise_path.parent.mkdir(parents=True, exist_ok=True)
    noise_path.write_text(json.dumps(noise))
    runs: dict = {}
    data: dict = {"dir": data_dir}
    chosen = settings or list(cfg.settings)
    for setting, spec in cfg.settings.items():
        for dataset in datasets:
            data.pop(dataset, None)  # the datasets differ per setting (a subset for the gap)
            for seed in seeds:
                for cond in spec["conditions"]:
                    try:
                        run = _data_run(
                            out,
                            cfg,
                            setting,
                            dataset,
                            cond,
                            seed,
                            data,
                            cache,
                            gather or setting not in chosen,
                            log,
                        )
                    except FileNotFoundError as e:  # the dataset is not on this machine
                        log(f"{setting} {dataset}: skipped ({e})")
                        break
                    if run is not None:
                        runs.setdefault(setting, {}).setdefault(dataset, {}).setdefault(cond, {})[seed] = run
    summary = {
        "config": json.loads(json.dumps(asdict(cfg))),
        "quick": quick,
        "seeds": list(seeds),
        "noise": noise,
        "runs": runs,
    }
    command = command or f"nowt reproduce cheon2024{' --quick' if quick else ''}"
    write_report(summary, out, command)
    log(f"wrote {out / 'RESULTS.md'}")
    return summary


ENTRIES = [
    Analysis(
        name="cheon2024",
        paper=PAPER,
        function=reproduce_cheon2024,
        table=(
            "the paper's protocol (fresh noise every batch): noise-phase alignment, Table 1 (MNIST, "
            "Fashion-MNIST; BP, FA, FA+noise, 784-100-10, 50 epochs) and the generalisation gap at "
            "1,600 images and depth 3, 3 seeds; nowt's pool variant as an exploration"
        ),
    ),
]

# The conditions study (what makes noise pretraining align) is an entry of this paper too.
from nowt.reproduce.cheon2024_conditions import ENTRIES as _CONDITIONS  # noqa: E402

ENTRIES += _CONDITIONS
