"""How a reproduction's registered rows are judged and tabulated: the one verdict rule, its band, and the
table of ours beside the published numbers."""

from __future__ import annotations

import math
from collections.abc import Sequence

from nowt.report import cell, markdown_table

#: How far the seeds' mean may lie from the published number and still match, unless a paper states its
#: own: percentage points for accuracies and errors, degrees for angles.
BAND = {"pp": 0.5, "degrees": 3.0}


def verdict(mean: float, published: float, band: dict[str, float], metric: str,
            diverged: Sequence[int] = ()) -> str:
    """The one verdict rule of every reproduction: "matches" when |mean of the seeds - published| <= the
    paper's band for the metric's unit (`BAND`), else "misses by +X.XX" (ours minus published). A row a
    seed of which diverged misses whatever the others give: the recipe does not reliably train."""
    if diverged and not math.isnan(published):
        return f"misses: seed{'s' * (len(diverged) > 1)} {', '.join(map(str, diverged))} diverged"
    if math.isnan(mean) or math.isnan(published):
        return "–"
    difference = mean - published
    limit = band["degrees" if metric.endswith("angle") else "pp"]
    return "matches" if abs(difference) <= limit else f"misses by {difference:+.2f}"


#: The registered rows' text for nowt's own experiments (no published number: no verdict).
NO_PAPER_RULE = ("Each row: the mean ± std of its finished seeds (seed folders `ROW/seedS`); there is no "
                 "published number, so no verdict. A row with fewer finished seeds than registered says so "
                 "in its status.")


def verdict_rule(band: dict[str, float]) -> str:
    return (f"Each row: the mean ± std of its finished seeds (seed folders `ROW/seedS`) beside the published "
            f"number. Verdict (`nowt.reproduce.verdicts.verdict`): **matches** when |mean - published| <= "
            f"{band['pp']:g} percentage points for accuracies and errors, {band['degrees']:g} degrees for "
            f"angles; otherwise **misses by** the difference; a row a seed of which diverged **misses** "
            f"whatever the others give. A row with fewer finished seeds than registered says so in its "
            f"status: its verdict is provisional.")


def results_spread(row: dict) -> str:
    """A row's "mean ± std (n=N)" over its finished seeds."""
    n = len(row["values"])
    if n == 0:
        return "–"
    return cell(row["ours"]) + (f" ± {cell(row['std'])}" if n > 1 else "") + f" (n={n})"


def results_table(rows: list[dict], verdicts: bool = True) -> str:
    header = ["run", "metric", "published", "ours: mean ± std (seeds)", "ours - published", "epochs",
              "seeds", *(["verdict"] if verdicts else [])]
    table = [[r["run"], r["metric"], r["published"], results_spread(r), r["difference"],
              "/".join(map(str, r["epochs"])) or "–", r["status"], *([r["verdict"]] if verdicts else [])]
             for r in rows]
    return markdown_table(header, table)
