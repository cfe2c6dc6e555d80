"""Why MNIST FC SDTP parallel does not run Table 5's inverse Adam betas (Bartunov et al. 2018).

Trains SDTP parallel on MNIST with every Table 5 value of that row (batch 128, standardised inputs, as
`nowt reproduce bartunov2018-mnist-fc` runs it) for a few epochs, once with the inverses' Adam betas as
printed (0.99, 0.95: beta1^2 > beta2) and once with beta1 at Table 4's fixed 0.9, and logs every 100 steps
the running accuracy, the inverse loss and the share of saturated units (|h| > 0.99) per hidden layer.

    OMP_NUM_THREADS=1 python benchmarks/bartunov_sdtp_betas.py --epochs 3 \
        --out results/bartunov2018/table5/sdtp_parallel_betas.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from nowt.data import load_dataset
from nowt.reproduce.bartunov2018 import TABLE5
from nowt.targetprop import TargetPropTrainer, mnist_fc


def run(inverse_betas: tuple[float, float], epochs: int, log_every: int = 100) -> list[dict]:
    lr, b1, b2, eps = TABLE5["mnist-fc"]["forward"]["sdtp-parallel"]
    ilr, _, _, ieps = TABLE5["mnist-fc"]["inverse"][2]
    sigma = TABLE5["mnist-fc"]["sigma"][2]
    torch.manual_seed(0)
    x, y = load_dataset("mnist").train
    trainer = TargetPropTrainer(mnist_fc(), "sdtp", "parallel", lr=lr, betas=(b1, b2), eps=eps,
                                inverse_lr=ilr, inverse_betas=inverse_betas, inverse_eps=ieps, sigma=sigma,
                                seed=0)
    order = torch.Generator().manual_seed(0)
    log, accuracies, step = [], [], 0
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=order).split(128):
            record = trainer.train_step(x[idx], y[idx])
            accuracies.append(record["accuracy"])
            step += 1
            if step % log_every == 0:
                with torch.no_grad():
                    hs, _ = trainer._forward(x[:1000])
                log.append({"step": step, "running_accuracy": sum(accuracies[-log_every:]) / log_every,
                            "inverse_loss": record["inverse_loss"],
                            "saturated": [float((h.abs() > 0.99).float().mean()) for h in hs[1:-1]]})
                print(inverse_betas, log[-1]["step"], round(log[-1]["running_accuracy"], 1),
                      [round(s, 2) for s in log[-1]["saturated"]], flush=True)
    return log


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    printed = TABLE5["mnist-fc"]["inverse"][2][1:3]
    results = {"command": f"python benchmarks/bartunov_sdtp_betas.py --epochs {args.epochs} --out {args.out}",
               "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, 1 torch thread",
               "torch": torch.__version__, "runs": {}}
    for betas in (printed, (0.9, printed[1])):
        results["runs"][f"inverse betas {betas}"] = run(betas, args.epochs)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
