"""Cost of a target-propagation step against a backprop step on the networks of Bartunov et al. (2018).

    OMP_NUM_THREADS=1 python benchmarks/targetprop_step.py [--rounds 21]

Forward + update of one batch of 128 MNIST images, interleaved rounds, median (the first round warms up):
DTP (parallel schedule) against backprop with Adam on the same network, for MNIST FC and MNIST LC.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import nowt.data
from nowt.targetprop import TargetPropTrainer, mnist_fc, mnist_lc

BATCH = 128


def step_cost(make, x, y, rounds: int) -> dict:
    torch.manual_seed(0)
    net = make()
    opt = torch.optim.Adam(net.parameters(), 1e-4)

    def bp():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dtp = TargetPropTrainer(make(), "dtp", "parallel", lr=1e-4)
    steps = {"bp": bp, "dtp": lambda: dtp.train_step(x, y)}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v[1:]) * 1000 for k, v in times.items()}
    return {"bp_ms": med["bp"], "dtp_ms": med["dtp"], "ratio": med["dtp"] / med["bp"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21, help="rounds on MNIST FC (LC: a quarter, >= 3)")
    args = p.parse_args()
    torch.set_num_threads(1)
    x, y = (t[:BATCH] for t in nowt.data.load_mnist("train"))
    costs = {"mnist_fc": step_cost(mnist_fc, x, y, args.rounds),
             "mnist_lc": step_cost(mnist_lc, x, y, max(3, args.rounds // 4))}
    print(json.dumps(costs, indent=1))


if __name__ == "__main__":
    main()
