"""The table of results/vit-dfa/: for every setting (a folder written by run.py) and rule, the DFA options,
the pooling, each grid rate's held-out accuracy, the rate chosen, and the final test accuracy over seeds.

    python results/vit-dfa/summarize.py
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def last(run: Path) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def describe(cfg: dict) -> str:
    opts = {k: cfg[k] for k in ("blocks", "position_feedback") if cfg["rule"] == "dfa" and cfg[k] not in
            ((), [], "full")}
    opts.update(cfg["extra"].get("dfa_options", {}))
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in opts.items()) or "–"


def rows() -> list[str]:
    out = []
    for setting in sorted(p for p in HERE.iterdir() if p.is_dir()):
        for rule in sorted(p for p in setting.iterdir() if p.is_dir()):
            seeds = sorted(rule.glob("seed*/metrics.jsonl"))
            if not seeds:
                continue
            cfg = json.loads((seeds[0].parent / "config.json").read_text())
            grid = {float(p.name[2:]): last(p)["test_accuracy"] for p in rule.glob("lr-grid/lr*")
                    if (p / "metrics.jsonl").is_file()}
            accs = [last(s.parent)["test_accuracy"] for s in seeds]
            spread = statistics.stdev(accs) if len(accs) > 1 else float("nan")
            scores = " / ".join(f"{grid[r]:.1f}" for r in sorted(grid))
            pool = cfg["extra"].get("vit_pool", "cls")
            per_seed = " / ".join(f"{a:.2f}" for a in accs)
            out.append(f"| {setting.name} | {cfg['rule']} | {describe(cfg)} | {pool} | {scores} "
                       f"| {cfg['lr']:g} | {len(accs)} | {statistics.mean(accs):.2f} ± {spread:.2f} "
                       f"| {per_seed} |")
    return out


if __name__ == "__main__":
    print("| setting | rule | DFA options | pool | held-out acc % at lr 3e-4 / 1e-3 / 3e-3 / 1e-2 "
          "| lr chosen | seeds | test acc % mean ± std | per seed |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows()))
