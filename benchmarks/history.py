"""One table per benchmark: every run is a line of `benchmarks/NAME.jsonl` (date, commit, machine, torch,
command and its numbers) and `benchmarks/NAME.md` is that table, newest first, rebuilt from it. The history is
the file; git keeps its changes."""

from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import torch

from nowt import provenance

HERE = Path(__file__).resolve().parent


def commit() -> str:
    """The commit the code ran at (with '+' when src/ or benchmarks/ had uncommitted changes)."""
    return provenance.commit("src", "benchmarks") or "?"


def record(name: str, numbers: dict, *, run: str | None = None, **meta) -> dict:
    """Appends one run of benchmark `name` (its `numbers`, e.g. {workload: {column: value}}) with the date,
    commit, machine, torch and command, and rebuilds NAME.md. Returns the record."""
    entry = {"run": run or f"{date.today().isoformat()}-{commit()}", "date": date.today().isoformat(),
             "commit": commit(), "machine": provenance.machine(), "torch": torch.__version__,
             "command": "python " + " ".join(["benchmarks/" + Path(sys.argv[0]).name, *sys.argv[1:]]),
             **meta, "numbers": numbers}
    path = HERE / f"{name}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(entry) + "\n")
    write_table(name)
    return entry


def write_table(name: str, digits: int = 2) -> Path:
    """NAME.md from NAME.jsonl: a table per workload, a row per run, newest first."""
    lines = [line for line in (HERE / f"{name}.jsonl").read_text().splitlines() if line.strip()]
    # newest first: by date, and within a day the later line first
    runs = [json.loads(line) for _, line in sorted(
        enumerate(lines), key=lambda il: (json.loads(il[1])["date"], il[0]), reverse=True)]
    workloads = list(dict.fromkeys(w for r in runs for w in r["numbers"]))
    parts = [f"# {name}\n", f"Generated from `{name}.jsonl` by `benchmarks/history.py`; newest first. Each "
             "row is one run: its command, commit and machine are in the file.\n"]
    for workload in workloads:
        columns = list(dict.fromkeys(c for r in runs for c in r["numbers"].get(workload, {})))
        parts.append(f"## {workload}\n")
        parts.append("| run | date | commit | machine | torch | " + " | ".join(columns) + " |")
        parts.append("|---" * (5 + len(columns)) + "|")
        for r in runs:
            row = r["numbers"].get(workload)
            if row is None:
                continue
            cells = [f"{row[c]:.{digits}f}" if isinstance(row.get(c), float) else str(row.get(c, "–"))
                     for c in columns]
            parts.append(f"| {r['run']} | {r['date']} | {r['commit']} | {r['machine']} | {r['torch']} | "
                         + " | ".join(cells) + " |")
        parts.append("")
    path = HERE / f"{name}.md"
    path.write_text("\n".join(parts))
    return path
