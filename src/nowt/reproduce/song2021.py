"""Song, Xu, Lafferty 2021, Convergence and Alignment of Gradient Descent with Random Backpropagation
Weights: the paper's claims measured on its two-layer model (`nowt.theory`) at its demo scale (n=100, d=20,
p=200). The figure values are not readable in our copy (../shared/papers.md), so the paper's stated claims
are checked, each with a verdict computed from >= 3 seeds a point:

1. Overparameterised, the training error of feedback alignment decays exponentially for relu, tanh and
   sigmoid (identity is a control: a linear model of rank d < n cannot interpolate).
2. cos(b, beta) after training grows with the regularisation lam on beta (backprop: chance-level control).
3. Without regularisation the alignment vanishes as the width p grows; with lam > 0 it does not.

Raw data: every simulation is one line of OUT/runs.jsonl (its settings, seed, the loss and cos(b, beta)
traces at every `record_every` steps, and for the convergence runs the smallest eigenvalue of the second
layer's kernel at init); OUT/meta.json holds the configuration, the timing and the provenance lines. The
tables, verdicts and figures are computed from those two files alone, also right after simulating, so
`nowt reproduce song2021 --gather --out OUT` rebuilds RESULTS.md byte for byte and simulates nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from nowt.reproduce.entry import Analysis, provenance
from nowt.reproduce.song2021_report import analyse, plots, results_md
from nowt.theory import ACTIVATIONS, FEEDBACKS, SimulationResult, TwoLayerFA, make_data, simulate

PAPER = ("Song, Xu, Lafferty 2021, Convergence and Alignment of Gradient Descent with Random Backpropagation "
         "Weights")
# 3 seeds a point: every claim below is a difference, claimed only when larger than the seeds' spread
FULL: dict[str, Any] = dict(conv_steps=10_000, conv_seeds=3, lam_steps=5_000, lam_seeds=3,
                            widths=(50, 100, 200, 400, 800, 1600, 3200), width_steps=1_500, width_seeds=3)
QUICK: dict[str, Any] = dict(conv_steps=1_000, conv_seeds=2, lam_steps=1_000, lam_seeds=2,
                             widths=(50, 200, 800), width_steps=600, width_seeds=2)
LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1)
WIDTH_LAMBDAS = (0.0, 0.1)
#: traces kept in runs.jsonl: every RECORD[group] steps (and the last step)
RECORD = dict(convergence=50, lam=50, width=100)
RUNS, META = "runs.jsonl", "meta.json"


def _record(group: str, res: SimulationResult, **settings) -> dict:
    return dict(group=group, **settings, step=res.steps.tolist(), loss=res.losses.tolist(),
                alignment=res.alignments.tolist())


def simulate_all(cfg: dict, *, n: int, d: int, p: int, lr: float) -> list[dict]:
    """Every simulation of the three claims, one record each; seed s draws the data and the weights."""
    records = []
    for psi in ACTIVATIONS:
        for fb in FEEDBACKS:
            for seed in range(cfg["conv_seeds"]):
                X, y = make_data(n, d, seed=seed)
                res = simulate(X, y, p=p, steps=cfg["conv_steps"], lr=lr, psi=psi, feedback=fb, seed=seed,
                               record_every=RECORD["convergence"])
                gram = TwoLayerFA.init(d, p, psi=psi, feedback=fb, seed=seed).gram(X)
                records.append(_record("convergence", res, psi=psi, feedback=fb, p=p, lam=0.0, seed=seed,
                                       steps=cfg["conv_steps"],
                                       gram_min_eig=float(torch.linalg.eigvalsh(gram)[0])))
    for lam in LAMBDAS:
        for fb in FEEDBACKS:
            for seed in range(cfg["lam_seeds"]):
                res = simulate(*make_data(n, d, seed=seed), p=p, steps=cfg["lam_steps"], lr=lr, lam=lam,
                               feedback=fb, seed=seed, record_every=RECORD["lam"])
                records.append(_record("lam", res, psi="relu", feedback=fb, p=p, lam=lam, seed=seed,
                                       steps=cfg["lam_steps"]))
    for width in cfg["widths"]:
        for lam in WIDTH_LAMBDAS:
            for seed in range(cfg["width_seeds"]):
                res = simulate(*make_data(n, d, seed=seed), p=width, steps=cfg["width_steps"], lr=lr, lam=lam,
                               seed=seed, record_every=RECORD["width"])
                records.append(_record("width", res, psi="relu", feedback="random", p=width, lam=lam,
                                       seed=seed, steps=cfg["width_steps"]))
    return records


def write_raw(out: Path, records: list[dict], meta: dict) -> None:
    with open(out / RUNS, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    (out / META).write_text(json.dumps(meta, indent=1) + "\n")


def read_raw(out: Path) -> tuple[list[dict], dict]:
    """The records of runs.jsonl and meta.json in `out` (written by a run without --gather)."""
    if not (out / RUNS).is_file() or not (out / META).is_file():
        raise FileNotFoundError(f"no {RUNS} and {META} in {out}: run `nowt reproduce song2021 --out {out}` "
                                "without --gather first")
    records = [json.loads(line) for line in (out / RUNS).read_text().splitlines() if line.strip()]
    return records, json.loads((out / META).read_text())


def reproduce_song2021(out_dir: str | Path, quick: bool = False, *, progress: bool = True,
                       command: str | None = None, lr: float = 0.05, gather: bool = False) -> dict:
    """Simulates the three claims into OUT/runs.jsonl and OUT/meta.json (with `gather`, reads them instead
    and simulates nothing), then writes three PNGs and RESULTS.md computed from those files; returns the
    tables."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not gather:
        cfg = QUICK if quick else FULL
        n, d, p = 100, 20, 200
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small matrices: one thread is as fast, and shares the machine better
        t0, c0 = time.time(), time.process_time()
        try:
            records = simulate_all(cfg, n=n, d=d, p=p, lr=lr)
        finally:
            torch.set_num_threads(threads)
        command = command or f"nowt reproduce song2021{' --quick' if quick else ''}"
        config = dict(cfg, widths=list(cfg["widths"]), n=n, d=d, p=p, lr=lr, quick=quick,
                      lambdas=list(LAMBDAS), width_lambdas=list(WIDTH_LAMBDAS), record=RECORD)
        meta: dict[str, Any] = dict(config=config, seconds=time.time() - t0,
                                    cpu_seconds=time.process_time() - c0, command=command,
                                    provenance=provenance(command))
        write_raw(out, records, meta)
    records, meta = read_raw(out)  # both paths compute from the files alone
    tables = analyse(records, meta["config"])
    tables.update(seconds=meta["seconds"], cpu_seconds=meta["cpu_seconds"], config=meta["config"])
    plots(out, records, tables)
    (out / "RESULTS.md").write_text(results_md(tables, meta))
    if progress:
        print("claims:", tables["claims"], f"({meta['seconds']:.0f} s); see {out / 'RESULTS.md'}")
    return tables


ENTRIES = [
    Analysis(name="song2021", paper=PAPER, function=reproduce_song2021,
             table=("two-layer model at n=100, d=20, p=200; exponential error decay, alignment cos(b, beta) "
                    "against lambda and width, 3 seeds a point, raw runs in runs.jsonl (--gather rebuilds) "
                    "(figure values not readable: claims checked)")),
]
