"""The trainer's own overhead: a training epoch of `nowt.train` against a bare PyTorch loop of the same model,
data and batch, in the same run, as a ratio (issue 11: <= 1.15).

    python benchmarks/trainer_overhead.py [--rounds 3] [--threads 1]   # a row of trainer_overhead.md

The workload is Akrout et al.'s official MNIST recipe (784-500-10 sigmoid, sigmoid cross-entropy, batches of
128 in order, plain SGD, fused as nowt builds it): the bare loop is the plain autograd version of it, nowt's
epoch is `train_epoch` of a `RuleLearner` built by `nowt.train` for the same config (rules bp, fa, kp; wm
with the official mirror, whose own extra work is reported as the ratio of its epoch to fa's). Rounds
interleave the variants in a rotating order; medians over rounds are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import date

import history
import torch
import torch.nn.functional as F

from nowt import provenance
from nowt.reproduce.akrout2019 import OFFICIAL_MIRROR
from nowt.train import RuleLearner, TrainConfig, build_model, make_loader, train_epoch
from nowt.train.factories import load_data

RECIPE = dict(hidden=(500,), activation="sigmoid", loss="bce", init="normal_fan_avg", momentum=0.0,
              batch_size=128, lr_schedule="constant", epochs=1, standardize=False, shuffle=False,
              drop_last=True, bias_lr_scale=1 / 128, lr=0.2)


def bare_epoch(x: torch.Tensor, y: torch.Tensor) -> float:
    """A plain autograd epoch of the recipe: model, loss and SGD written out, no nowt."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 500), torch.nn.Sigmoid(),
                                torch.nn.Linear(500, 10))
    opt = torch.optim.SGD([{"params": [model[1].weight, model[3].weight]},
                           {"params": [model[1].bias, model[3].bias], "lr": 0.2 / 128}], lr=0.2,
                          fused=True)  # as nowt's make_optimizer builds it: the loops differ, not the step
    t0 = time.perf_counter()
    for i in range(len(x) // 128):
        xb, yb = x[i * 128:(i + 1) * 128], y[i * 128:(i + 1) * 128]
        out = model(xb)
        loss = F.binary_cross_entropy_with_logits(out, F.one_hot(yb, 10).float(), reduction="sum") / len(yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def nowt_epoch(rule: str, data) -> float:
    cfg = TrainConfig(rule=rule, **RECIPE, **(OFFICIAL_MIRROR if rule == "wm" else {}))
    loader = make_loader(data.train, cfg.batch_size, shuffle=False, drop_last=True)
    model = build_model(cfg, (1, 28, 28), 10)
    learner = RuleLearner(model, cfg, len(loader))
    model(data.train[0][:128])
    learner.begin_training()
    t0 = time.perf_counter()
    train_epoch(learner, loader, rule, "cpu", progress=False)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the run's raw numbers here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(TrainConfig(**RECIPE))
    variants = {"bare": lambda: bare_epoch(*data.train), **{r: (lambda r=r: nowt_epoch(r, data))
                                                             for r in ("bp", "fa", "kp", "wm")}}
    times: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for i in range(args.rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(variants[name]())
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"date": date.today().isoformat(),
              "machine": f"{provenance.machine()}, torch {torch.__version__}", "epoch_seconds": times,
              "median_seconds": med, "ratio_to_bare": {k: med[k] / med["bare"] for k in med},
              "kp_wm_ratio_to_fa": {k: med[k] / med["fa"] for k in ("kp", "wm")}}
    print(json.dumps({k: result[k] for k in ("median_seconds", "ratio_to_bare", "kp_wm_ratio_to_fa")},
                     indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    numbers = {**{f"{k} / bare": v for k, v in result["ratio_to_bare"].items()},
               **{f"{k} / fa": v for k, v in result["kp_wm_ratio_to_fa"].items()}, "bare s": med["bare"]}
    history.record("trainer_overhead", {"MNIST MLP epoch, one thread": numbers}, threads=args.threads)


if __name__ == "__main__":
    main()
