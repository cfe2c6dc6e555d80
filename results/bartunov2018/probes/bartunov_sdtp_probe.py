"""Probes of SDTP on Bartunov et al. 2018's MNIST FC column with Table 5's values, where our full runs miss.

Trains SDTP (parallel or alternating) on MNIST with every Table 5 value of that row (standardised inputs,
as `nowt reproduce bartunov2018-mnist-fc` runs it) for a few epochs, once per inverse Adam beta1 asked for
("printed" is Table 5's), and logs every 100 steps the running accuracy, the inverse loss and the share of
saturated units (|h| > 0.99) per hidden layer, and after every epoch the test error and each inverse's
reconstruction error (mean squared error per unit, without noise).

    # SDTP parallel: the printed inverse betas (0.99, 0.95), beta1^2 > beta2, against beta1 0.9
    PROBE=results/bartunov2018/probes/bartunov_sdtp_probe.py
    OMP_NUM_THREADS=1 python $PROBE --epochs 3 \
        --out results/bartunov2018/probes/sdtp_parallel_betas.json
    # SDTP alternating as printed, batch 128 and 512
    OMP_NUM_THREADS=1 python $PROBE --schedule alternating --epochs 8 \
        --inverse-beta1 printed --batch 128 --out results/bartunov2018/probes/sdtp_alternating_b128.json
    # SDTP alternating with the forward Adam's beta2 at 0.999, with the forward lr at 1e-4, and switching
    # every 50 or 10 batches instead of every epoch (2026-12-02; written to /tmp, copied to
    # results/bartunov2018/probes/sdtp_alternating_{forward_beta2,lr1e-4,switch50,switch10}.json)
    OMP_NUM_THREADS=1 python $PROBE --schedule alternating --epochs 8 \
        --inverse-beta1 printed --set betas=0.9,0.999 --out sdtp_alternating_forward_beta2.json
    OMP_NUM_THREADS=1 python $PROBE --schedule alternating --epochs 8 \
        --inverse-beta1 printed --set lr=1e-4 --out sdtp_alternating_lr1e-4.json
    OMP_NUM_THREADS=1 python $PROBE --schedule alternating --epochs 8 \
        --inverse-beta1 printed --switch-every 50 --out sdtp_alternating_switch50.json   # and 10
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from nowt.data import load_dataset
from nowt.reproduce.bartunov2018 import TABLE5
from nowt.targetprop import TargetPropTrainer, mnist_fc


def run(schedule: str, inverse_betas: tuple[float, float], epochs: int, batch: int,
        overrides: dict | None = None, log_every: int = 100) -> dict[str, list]:
    row = 2 if schedule == "parallel" else 3  # Table 5's inverse columns: dtp-p, dtp-a, sdtp-p, sdtp-a
    lr, b1, b2, eps = TABLE5["mnist-fc"]["forward"][f"sdtp-{schedule}"]
    ilr, _, _, ieps = TABLE5["mnist-fc"]["inverse"][row]
    sigma = TABLE5["mnist-fc"]["sigma"][row]
    torch.manual_seed(0)
    data = load_dataset("mnist")
    (x, y), (x_test, y_test) = data.train, data.test
    settings = dict(lr=lr, betas=(b1, b2), eps=eps, inverse_lr=ilr, inverse_betas=inverse_betas,
                    inverse_eps=ieps, sigma=sigma)
    trainer = TargetPropTrainer(mnist_fc(), "sdtp", schedule, seed=0, **{**settings, **(overrides or {})})
    order = torch.Generator().manual_seed(0)
    steps, epoch_log, accuracies = [], [], []
    for epoch in range(1, epochs + 1):
        phase = trainer.phase
        for idx in torch.randperm(len(y), generator=order).split(batch):
            record = trainer.train_step(x[idx], y[idx])
            accuracies.append(record["accuracy"])
            if len(accuracies) % log_every == 0:
                with torch.no_grad():
                    hs, _ = trainer._forward(x[:1000])
                steps.append({"step": len(accuracies),
                              "running_accuracy": sum(accuracies[-log_every:]) / log_every,
                              "inverse_loss": record["inverse_loss"],
                              "saturated": [float((h.abs() > 0.99).float().mean()) for h in hs[1:-1]]})
        trainer.end_epoch()
        with torch.no_grad():
            error = 100 * float((trainer.model(x_test).argmax(1) != y_test).float().mean())
        epoch_log.append({"epoch": epoch, "phase": phase, "test_error": error,
                          "reconstruction_errors": trainer.reconstruction_errors(x[:1000])})
        print(schedule, inverse_betas, epoch, phase, round(error, 2),
              {k: round(v, 3) for k, v in epoch_log[-1]["reconstruction_errors"].items()}, flush=True)
    return {"steps": steps, "epochs": epoch_log}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--schedule", choices=("parallel", "alternating"), default="parallel")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--inverse-beta1", default="printed,0.9", help="comma list: printed or a number")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another value for a TargetPropTrainer setting than Table 5's, e.g. inverse_lr=1e-3 "
                        "or betas=0.9,0.999 (repeatable)")
    p.add_argument("--switch-every", type=int, default=0, metavar="STEPS",
                   help="alternating: switch between inverse and forward training every STEPS batches "
                        "(the trainer's alternate_every; the paper switches each epoch, 0)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        numbers = tuple(float(v) for v in value.split(","))
        overrides[key] = numbers if len(numbers) > 1 else numbers[0]
    if args.switch_every:
        overrides["alternate_every"] = args.switch_every
    torch.set_num_threads(1)
    printed = TABLE5["mnist-fc"]["inverse"][2 if args.schedule == "parallel" else 3][1:3]
    results = {"command": "python results/bartunov2018/probes/bartunov_sdtp_probe.py "
               + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 1 torch thread",
               "torch": torch.__version__, "schedule": args.schedule, "batch": args.batch,
               "overrides": overrides, "switch_every": args.switch_every, "runs": {}}
    for beta1 in args.inverse_beta1.split(","):
        betas = printed if beta1 == "printed" else (float(beta1), printed[1])
        results["runs"][f"inverse betas {betas}"] = run(args.schedule, betas, args.epochs, args.batch,
                                                        overrides)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
