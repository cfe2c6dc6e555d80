"""Forward-backward time of the ConvNet under bp, fa and usf over plain autograd, for comparing two commits
on a noisy machine (no optimizer step, no record written: an A/B probe, not a table).

    PYTHONPATH=/path/to/other/checkout/src python benchmarks/commit_ab.py   # the other commit's nowt
    python benchmarks/commit_ab.py                                          # this checkout's

Run the two alternately a few times; one thread, 7 rounds of 20 steps after 3 warm-up steps, median.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
import torch.nn.functional as F

import nowt


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    conv = nowt.models.convnet(3, 10, 32, 32)
    x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
    models = {"autograd": conv, **{r: nowt.convert(copy.deepcopy(conv), r) for r in ("bp", "fa", "usf")}}

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
