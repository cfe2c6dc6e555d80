"""Forward-backward time of a model under some rules over plain autograd, for comparing two commits on a
noisy machine (no optimizer step, no record written: an A/B probe, not a table). By default the ConvNet
(32x32x3, batch 64) under bp, fa and usf; `--workload mlp` is step_time's MLP (784-1000-1000-10 tanh,
batch 128).

    PYTHONPATH=/path/to/other/checkout/src python benchmarks/commit_ab.py   # the other commit's nowt
    python benchmarks/commit_ab.py                                          # this checkout's
    python benchmarks/commit_ab.py --workload mlp --rules brsf,usf,kp

Run the two alternately a few times; one thread, 7 rounds of 20 steps after 3 warm-up steps, median.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

import nowt


def main() -> None:
    parser = argparse.ArgumentParser(description="forward-backward time over autograd, for A/B of commits")
    parser.add_argument("--workload", choices=("convnet", "mlp"), default="convnet")
    parser.add_argument("--rules", default="bp,fa,usf", help="comma-separated rule names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if args.workload == "convnet":
        base = nowt.models.convnet(3, 10, 32, 32)
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    else:
        base = nowt.models.mlp(784, (1000, 1000), 10, activation="tanh")
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    rules = [r for r in args.rules.split(",") if r]
    models = {"autograd": base, **{r: nowt.convert(copy.deepcopy(base), r) for r in rules}}

    def step(m: torch.nn.Module) -> None:
        loss = F.cross_entropy(m(x), y)
        m.zero_grad(set_to_none=True)
        loss.backward()

    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(7):
        for k, m in models.items():
            for _ in range(3):
                step(m)
            t0 = time.perf_counter()
            for _ in range(20):
                step(m)
            times[k].append((time.perf_counter() - t0) / 20 * 1e3)
    base = statistics.median(times["autograd"])
    print(nowt.__file__)
    for k, v in times.items():
        print(f"{k:9s} {statistics.median(v):7.2f} ms  {statistics.median(v) / base:.3f}x")


if __name__ == "__main__":
    main()
