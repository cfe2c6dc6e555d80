"""`nowt reproduce NAME [--quick]`: the papers nowt implements, one module each, under one registry.

    nowt.reproduce.run("akrout2019", "runs/reproduce/akrout2019-quick", quick=True)

`REPRODUCTIONS` maps a name to its entry, of one of two kinds (`nowt.reproduce.entry`): a `Reproduction`
(a table of TrainConfig runs beside the published numbers) or an `Analysis` (a function that computes its
own results). Every published number is stated once, in its paper's module. `run` writes RESULTS.md and
figures into the output folder; the committed ones live in results/<paper>/ (`--out results/<paper>`).
"""

from __future__ import annotations

import os
from pathlib import Path

from nowt.reproduce import (
    akrout2019,
    bartunov2018,
    biotorch2021,
    cheon2024,
    gpt_rules,
    nokland2016,
    song2021,
    vit_rules,
)
from nowt.reproduce.entry import (
    METRICS,
    SEEDS,
    Analysis,
    Entry,
    Reproduction,
    known_models,
    missing_piece,
    provenance,
    run_config,
    run_reproduction,
    seed_dir,
)
from nowt.reproduce.verdicts import BAND, results_spread, results_table, verdict

PAPERS = {module.__name__.rsplit(".", 1)[1]: module
          for module in (akrout2019, bartunov2018, nokland2016, biotorch2021, cheon2024, song2021, vit_rules,
                        gpt_rules)}
#: The one registry: name -> entry, in the order of PAPERS.
REPRODUCTIONS: dict[str, Entry] = {entry.name: entry for module in PAPERS.values()
                                  for entry in module.ENTRIES}


#: The reproductions whose runs are committed, and their folder under results/
COMMITTED = {"akrout2019": "akrout2019", "nokland2016": "nokland2016", "biotorch-mnist": "biotorch2021",
             "bartunov2018-mnist-fc": "bartunov2018", "bartunov2018-mnist-lc": "bartunov2018/mnist-lc"}
#: results/README.md's generated block lies between these lines
VERDICTS_BEGIN, VERDICTS_END = "<!-- verdicts: nowt reproduce --verdicts -->", "<!-- end verdicts -->"


SUMMARY_BEGIN = "<!-- verdict summary: nowt reproduce --verdicts -->"
SUMMARY_END = "<!-- end verdict summary -->"


def _registered_cells(root: str | os.PathLike) -> dict[str, tuple[str, list[dict]]]:
    """name -> (folder, the registered rows' cells that have a published number), read from the logs."""
    cells = {}
    for name, folder in COMMITTED.items():
        entry = get(name)
        assert isinstance(entry, Reproduction)  # the committed ones train runs
        rows = run_reproduction(entry, out_dir=Path(root) / folder, gather=True, progress=False,
                                only=[r for r in entry.runs if r not in entry.explorations])
        cells[name] = (folder, [r for r in rows
                                if r["metric"] not in entry.unjudged and r["published"] == r["published"]])
    return cells


def verdicts(root: str | os.PathLike = "results", cells: dict | None = None) -> str:
    """Every committed reproduction's registered rows read from their logs (training nothing): ours as mean ±
    std over the finished seeds beside the published number, and the verdict (`verdicts.verdict`); the
    explorations are linked, never listed here. Metrics tabulated without a verdict (`unjudged`) are left to
    each RESULTS.md."""
    lines = ["| reproduction | row | metric | published | ours: mean ± std (seeds) | verdict |",
             "|---|---|---|---|---|---|"]
    for name, (folder, rows) in (cells or _registered_cells(root)).items():
        link = f"[{name}]({folder}/RESULTS.md)"
        for r in rows:
            seeds = r["collapsed"]
            collapsed = (f"; seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))} collapsed (see its "
                         "RESULTS.md)" if seeds else "")
            lines.append(f"| {link} | {r['run']} | {r['metric']} | {r['published']:.2f} | "
                         f"{results_spread(r)}{collapsed} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def verdict_summary(root: str | os.PathLike = "results", cells: dict | None = None) -> str:
    """One line per committed reproduction: of its registered cells (a row's metric with a published
    number), how many match and miss with every registered seed finished, how many are provisional (fewer
    seeds) and how many have no finished run yet. Links are relative to the repository root."""
    lines = ["| reproduction | registered cells | match | miss | provisional (match / miss) | not run yet |",
             "|---|---|---|---|---|---|"]
    for name, (folder, rows) in (cells or _registered_cells(root)).items():
        done = [r["verdict"] for r in rows if r["values"]]
        final = [v for v in done if "provisional" not in v]
        early = [v for v in done if "provisional" in v]
        lines.append(f"| [{name}]({Path(root).name}/{folder}/RESULTS.md) | {len(rows)} | "
                     f"{_count(final, 'matches')} | {_count(final, 'misses')} | "
                     f"{_count(early, 'matches')} / {_count(early, 'misses')} | {len(rows) - len(done)} |")
    return "\n".join(lines) + "\n"


def _count(verdicts: list[str], word: str) -> int:
    return sum(v.startswith(word) for v in verdicts)


def _fill(path: Path, begin: str, end: str, body: str) -> Path:
    if not path.is_file():
        raise ValueError(f"{path.parent} has no README.md to write the verdicts into (--out: the results "
                         f"folder, by default results/)")
    text = path.read_text()
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin} ... {end} block to fill")
    head, rest = text.split(begin, 1)
    path.write_text(f"{head}{begin}\n{body}{end}{rest.split(end, 1)[1]}")
    return path


def write_verdicts(root: str | os.PathLike = "results") -> Path:
    """Rewrites the generated block of ROOT/README.md with `verdicts(root)` and, where the README above ROOT
    (the repository's) has one, its summary block with `verdict_summary(root)`."""
    cells = _registered_cells(root)
    path = _fill(Path(root) / "README.md", VERDICTS_BEGIN, VERDICTS_END, verdicts(root, cells))
    top = Path(root).resolve().parent / "README.md"
    if top.is_file() and SUMMARY_BEGIN in top.read_text():
        _fill(top, SUMMARY_BEGIN, SUMMARY_END, verdict_summary(root, cells))
    return path


def get(name: str) -> Entry:
    if name not in REPRODUCTIONS:
        raise ValueError(f"unknown reproduction {name!r}; known: {', '.join(REPRODUCTIONS)}")
    return REPRODUCTIONS[name]


def describe(entry: Entry) -> str:
    """The listing of one entry: paper, what is reproduced, and for a table its runs and numbers."""
    return entry.describe()


def listing() -> str:
    """`nowt reproduce --list`: every entry described."""
    return "\n\n".join(e.describe() for e in REPRODUCTIONS.values())


def default_out(name: str, quick: bool = False) -> Path:
    """Where `nowt reproduce NAME` writes unless told: runs/reproduce/NAME[-quick]."""
    return Path("runs/reproduce") / f"{name}{'-quick' if quick else ''}"


def run(name: str, out_dir: str | os.PathLike | None = None, quick: bool = False,
        only: list[str] | None = None, progress: bool = True, command: str | None = None,
        gather: bool = False, seeds: list[int] | None = None, **overrides) -> Path:
    """Runs reproduction `name` into `out_dir` (default `default_out`); returns its RESULTS.md.
    `only`: the runs of a table to train; `overrides`: TrainConfig fields for every run (data_dir, device,
    download), or the analysis function's keyword arguments. `gather`: train nothing, tabulate the runs
    already in `out_dir` (their metrics.jsonl and config.json). `seeds`: train only these of the registered
    seeds (the others are read from `out_dir` when there)."""
    out = Path(out_dir) if out_dir is not None else default_out(name, quick)
    return get(name).run(out, quick=quick, only=only, progress=progress, command=command, gather=gather,
                         seeds=seeds, **overrides)


__all__ = ["BAND", "COMMITTED", "METRICS", "PAPERS", "REPRODUCTIONS", "SEEDS", "SUMMARY_BEGIN", "SUMMARY_END",
           "VERDICTS_BEGIN", "VERDICTS_END", "Analysis", "Entry",
           "Reproduction", "default_out", "describe", "get", "known_models", "listing", "missing_piece",
           "provenance", "results_spread", "results_table", "run", "run_config", "run_reproduction",
           "seed_dir", "verdict", "verdict_summary", "verdicts", "write_verdicts"]
