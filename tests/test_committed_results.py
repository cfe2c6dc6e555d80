"""Raw data behind every number (issue 24): each committed analysis's RESULTS.md is rebuilt by `--gather`
from the per-run files committed beside it, training nothing. (The tables of runs are checked the same way
by `nowt reproduce --verdicts`.) A .gitignore that kept those files out of git once left the tables
unrebuildable from a checkout."""

import re
import shutil
from pathlib import Path

import pytest

from nowt import reproduce

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: analysis -> its committed folder, and the per-run files its tables are computed from
ANALYSES = {"song2021": ("song2021", "runs.jsonl"), "cheon2024": ("cheon2024", "runs/**/*.json"),
            "cheon2024-conditions": ("cheon2024/conditions", "runs/**/*.json")}


def _tables(text: str) -> str:
    """RESULTS.md without the lines that say when and on what it was written."""
    return "\n".join(line for line in text.splitlines() if not re.match(r"(Command|Date): ", line))


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_a_committed_analysis_is_rebuilt_from_its_committed_runs(name, tmp_path, monkeypatch):
    folder, raw = ANALYSES[name]
    committed = RESULTS / folder
    assert list(committed.glob(raw)), f"no per-run files ({raw}) committed in results/{folder}"
    out = tmp_path / folder
    shutil.copytree(committed, out, ignore=shutil.ignore_patterns("*.png", "RESULTS.md", "history"))
    monkeypatch.chdir(tmp_path)
    reproduce.run(name, out, gather=True, progress=False)
    assert _tables((out / "RESULTS.md").read_text()) == _tables((committed / "RESULTS.md").read_text())
