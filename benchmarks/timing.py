"""Step timing shared by the benchmarks: variants timed in interleaved rounds, median per variant."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_ms(steps: dict[str, Callable[[], object]], rounds: int, per_round: int) -> dict[str, float]:
    """{name: median ms a call} over `rounds` rounds of `per_round` calls of every step; each round starts
    at another variant, so that no variant always runs first (or just after the same one)."""
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for r in range(rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            for _ in range(per_round):
                steps[k]()
            times[k].append((time.perf_counter() - t0) / per_round * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}
