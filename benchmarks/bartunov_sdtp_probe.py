"""Probes of SDTP on Bartunov et al. 2018's MNIST FC column with Table 5's values, where our full runs miss.

Trains SDTP (parallel or alternating) on MNIST with every Table 5 value of that row (standardised inputs,
as `nowt reproduce bartunov2018-mnist-fc` runs it) for a few epochs, once per inverse Adam beta1 asked for
("printed" is Table 5's), and logs every 100 steps the running accuracy, the inverse loss and the share of
saturated units (|h| > 0.99) per hidden layer, and after every epoch the test error and each inverse's
reconstruction error (mean squared error per unit, without noise).

    # SDTP parallel: the printed inverse betas (0.99, 0.95), beta1^2 > beta2, against beta1 0.9
    OMP_NUM_THREADS=1 python benchmarks/bartunov_sdtp_probe.py --epochs 3 \
        --out results/bartunov2018/sdtp_parallel_betas.json
    # SDTP alternating as printed, batch 128 and 512
    OMP_NUM_THREADS=1 python benchmarks/bartunov_sdtp_probe.py --schedule alternating --epochs 8 \
        --inverse-beta1 printed --batch 128 --out results/bartunov2018/sdtp_alternating_b128.json
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
        log_every: int = 100) -> dict[str, list]:
    row = 2 if schedule == "parallel" else 3  # Table 5's inverse columns: dtp-p, dtp-a, sdtp-p, sdtp-a
    lr, b1, b2, eps = TABLE5["mnist-fc"]["forward"][f"sdtp-{schedule}"]
    ilr, _, _, ieps = TABLE5["mnist-fc"]["inverse"][row]
    sigma = TABLE5["mnist-fc"]["sigma"][row]
    torch.manual_seed(0)
    data = load_dataset("mnist")
    (x, y), (x_test, y_test) = data.train, data.test
    trainer = TargetPropTrainer(mnist_fc(), "sdtp", schedule, lr=lr, betas=(b1, b2), eps=eps,
                                inverse_lr=ilr, inverse_betas=inverse_betas, inverse_eps=ieps, sigma=sigma,
                                seed=0)
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
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    printed = TABLE5["mnist-fc"]["inverse"][2 if args.schedule == "parallel" else 3][1:3]
    results = {"command": "python benchmarks/bartunov_sdtp_probe.py " + " ".join(sys.argv[1:]),
               "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 1 torch thread",
               "torch": torch.__version__, "schedule": args.schedule, "batch": args.batch, "runs": {}}
    for beta1 in args.inverse_beta1.split(","):
        betas = printed if beta1 == "printed" else (float(beta1), printed[1])
        results["runs"][f"inverse betas {betas}"] = run(args.schedule, betas, args.epochs, args.batch)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
