"""Verdicts: one rule with each paper's band, mean ± spread over finished seeds, collapsed and diverged seeds
named, and the generated verdict tables of the READMEs."""

import math

import pytest

from nowt import reproduce
from nowt.reproduce import (
    REPRODUCTIONS,
    Reproduction,
    run_reproduction,
)

TABLES = {name: e for name, e in REPRODUCTIONS.items() if isinstance(e, Reproduction)}


def test_verdict_is_one_rule_with_the_papers_band():
    from nowt.reproduce import BAND, verdict
    assert BAND == {"pp": 0.5, "degrees": 3.0}
    assert verdict(1.90, 1.45, BAND, "best_test_error") == "matches"
    assert verdict(1.96, 1.45, BAND, "best_test_error") == "misses by +0.51"
    assert verdict(97.2, 97.8, BAND, "best_test_accuracy") == "misses by -0.60"
    assert verdict(42.9, 40.0, BAND, "output_angle") == "matches"
    assert verdict(43.1, 40.0, BAND, "output_angle") == "misses by +3.10"
    assert verdict(math.nan, 40.0, BAND, "output_angle") == verdict(1.0, math.nan, BAND, "x") == "–"


def test_rows_report_the_mean_and_spread_of_finished_seeds_and_explorations_apart(tmp_path, monkeypatch):
    """Every registered row runs its seeds into ROW/seedS; the table gives their mean ± std and a verdict;
    a seed that has not finished is named and left out of the mean; an exploration runs one seed, has its
    own section and no verdict; a finished seed is read, never trained again."""
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=2, batch_size=50),
                        runs={"fa": {"rule": "fa"}, "fa-wide": {"rule": "fa", "hidden": (16,)}},
                        published=dict.fromkeys(("fa", "fa-wide"), {"best_test_accuracy": 50.0}),
                        explorations={"fa-wide": "after fa missed"})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    rows = run_reproduction(tiny, out_dir=tmp_path, seeds=[0, 2], progress=False)
    fa = next(r for r in rows if r["run"] == "fa")
    assert fa["seeds"] == [0, 2] and fa["status"] == "2 of 3 seeds (seed 1: not run)"
    assert fa["ours"] == pytest.approx(sum(fa["values"]) / 2) and fa["verdict"].endswith("(provisional)")
    assert not (tmp_path / "fa" / "seed1").exists() and (tmp_path / "fa-wide" / "seed0").is_dir()
    assert not (tmp_path / "fa-wide" / "seed2").exists()  # an exploration runs its first seed alone
    lines = (tmp_path / "fa" / "seed2" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "fa" / "seed2" / "metrics.jsonl").write_text(lines[0] + "\n")  # seed 2 stopped early
    (tmp_path / "fa" / "seed2" / "checkpoint.pt").unlink()
    mtime = (tmp_path / "fa" / "seed0" / "metrics.jsonl").stat().st_mtime_ns
    rows = run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)
    fa = next(r for r in rows if r["run"] == "fa")
    assert fa["seeds"] == [0] and "seed 2: unfinished (1 of 2 epochs)" in fa["status"]
    assert fa["ours"] == fa["values"][0]
    path = reproduce.run("tiny", tmp_path, seeds=[1], progress=False)  # trains seed 1 alone
    assert (tmp_path / "fa" / "seed0" / "metrics.jsonl").stat().st_mtime_ns == mtime  # read, not retrained
    text = path.read_text()
    registered, explored = text.split("## Explorations (not verdicts)")
    assert "| fa | best_test_accuracy | 50.00 |" in registered
    assert "fa-wide" not in registered.split("|---")[1]
    assert "**fa-wide**: after fa missed" in explored and "| fa-wide |" in explored
    assert "verdict" not in explored.split("\n## ")[0].split("|---")[0]
    assert "**matches** when |mean - published| <= 0.5 percentage points" in registered


def test_verdicts_table_lists_registered_rows_only_and_fills_the_readme_block(tmp_path, monkeypatch,
                                                                              capsys):
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=50),
                        runs={"fa": {"rule": "fa"}, "fa-wide": {"rule": "fa", "hidden": (16,)}},
                        published=dict.fromkeys(("fa", "fa-wide"), {"best_test_accuracy": 50.0}),
                        explorations={"fa-wide": "after fa missed"}, seeds=(0, 1, 2))
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    monkeypatch.setattr(reproduce, "COMMITTED", {"tiny": "tiny"})
    run_reproduction(tiny, out_dir=tmp_path / "tiny", seeds=[0, 1], progress=False)
    table = reproduce.verdicts(tmp_path)
    (row,) = [line for line in table.splitlines() if "| fa |" in line]
    assert row.startswith("| [tiny](tiny/RESULTS.md) | fa | best_test_accuracy | 50.00 |")
    assert "(n=2)" in row and "(provisional)" in row and "fa-wide" not in table
    with pytest.raises(ValueError, match="no <!-- verdicts"):
        (tmp_path / "README.md").write_text("# results\n")
        reproduce.write_verdicts(tmp_path)
    begin, end = reproduce.VERDICTS_BEGIN, reproduce.VERDICTS_END
    (tmp_path / "README.md").write_text(f"# r\n\n{begin}\nold\n{end}\nend\n")
    assert reproduce.write_verdicts(tmp_path).read_text() == f"# r\n\n{begin}\n{table}{end}\nend\n"
    from nowt.cli import main
    capsys.readouterr()
    assert main(["reproduce", "--verdicts", "--out", str(tmp_path)]) == 0  # prints the table it wrote
    assert capsys.readouterr().out == f"{table}written into {tmp_path / 'README.md'}\n"


def test_verdict_summary_counts_registered_cells_and_fills_the_top_readme(tmp_path, monkeypatch):
    """Two of three seeds: fa's cells are provisional; fa-wide (an exploration) is never counted."""
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=50),
                        runs={"fa": {"rule": "fa"}, "fa-wide": {"rule": "fa", "hidden": (16,)},
                              "bp": {"rule": "bp"}},
                        published={"fa": {"best_test_accuracy": 0.0, "output_angle": 0.0},
                                   "fa-wide": {"best_test_accuracy": 50.0},
                                   "bp": {"best_test_accuracy": 50.0}},
                        explorations={"fa-wide": "after fa missed"}, seeds=(0, 1, 2))
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    monkeypatch.setattr(reproduce, "COMMITTED", {"tiny": "tiny"})
    root = tmp_path / "results"
    run_reproduction(tiny, out_dir=root / "tiny", seeds=[0, 1], only=["fa"], progress=False)
    summary = reproduce.verdict_summary(root)
    # fa's accuracy lies far above 0 (a miss) and its output angle far from 0 degrees (a miss): provisional
    assert summary.splitlines()[2] == "| [tiny](results/tiny/RESULTS.md) | 3 | 0 | 0 | 0 / 2 | 1 |"
    begin, end = reproduce.VERDICTS_BEGIN, reproduce.VERDICTS_END
    (root / "README.md").write_text(f"{begin}\n{end}\n")
    top = tmp_path / "README.md"
    top.write_text(f"# nowt\n{reproduce.SUMMARY_BEGIN}\nstale\n{reproduce.SUMMARY_END}\nrest\n")
    reproduce.write_verdicts(root)
    assert top.read_text() == f"# nowt\n{reproduce.SUMMARY_BEGIN}\n{summary}{reproduce.SUMMARY_END}\nrest\n"


def test_a_seed_whose_output_collapsed_is_named_beside_the_mean(tmp_path, monkeypatch):
    """BioTorch's dfa row: two of three seeds blew up in epoch 1 and sat at chance; the registered table's
    mean (59.80 ± 49.98) must say so in its own row, not only further down the page."""
    import json

    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=2, batch_size=50),
                        runs={"bp": {"rule": "bp"}}, published={"bp": {"best_test_accuracy": 99.0}})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    run_reproduction(tiny, out_dir=tmp_path / "tiny", progress=False)
    for seed, marks in [(1, (True, True)), (2, (True, False))]:
        path = tmp_path / "tiny" / "bp" / f"seed{seed}" / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**r, "collapsed": m}) + "\n"
                                for r, m in zip(records, marks, strict=True)))
    (row,) = run_reproduction(tiny, out_dir=tmp_path / "tiny", gather=True, progress=False)
    assert row["seeds"] == [0, 1, 2]  # in the mean: they are the recipe's outcome
    assert row["status"] == ("3 of 3 seeds (seed 1: collapsed from epoch 1 to the end; "
                             "seed 2: collapsed at epoch 1, recovered by epoch 2)")
    monkeypatch.setattr(reproduce, "COMMITTED", {"tiny": "tiny"})
    (line,) = [x for x in reproduce.verdicts(tmp_path).splitlines() if "| bp |" in x]
    assert "(n=3); seeds 1, 2 collapsed (see its RESULTS.md) |" in line  # the verdicts table says it too


def test_a_seed_that_diverges_is_tabulated_as_such_and_the_row_misses(tmp_path, monkeypatch):
    """biotorch-mnist's dfa seed 0, rerun under the registered recipe, diverged in its first step-400 read:
    the reproduction must go on with the other seeds and rows, and the table must say which seed diverged
    instead of averaging the others as if it had not run."""
    from nowt.reproduce import entry

    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=2000,
                                    lr_schedule="constant"),
                        runs={"blows-up": {"rule": "bp", "lr": 1e30}, "bp": {"rule": "bp"},
                              "one-bad": {"rule": "fa"}},
                        published={r: {"best_test_accuracy": 50.0} for r in ("blows-up", "bp", "one-bad")})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    real_fit = entry.fit

    def seed_1_of_one_bad_diverges(cfg, **kw):
        if cfg.seed == 1 and cfg.rule == "fa":
            cfg.lr = 1e30  # the loop's own divergence, marked in the folder; the folder keeps this config
        return real_fit(cfg, **kw)

    monkeypatch.setattr(entry, "fit", seed_1_of_one_bad_diverges)
    rows = {r["run"]: r for r in run_reproduction(tiny, out_dir=tmp_path, progress=False)}
    blows = rows["blows-up"]
    assert blows["verdict"] == "misses: seeds 0, 1, 2 diverged" and blows["values"] == []
    assert blows["status"].startswith("0 of 3 seeds (seed 0: diverged in epoch 1: test loss became nan")
    assert rows["bp"]["status"] == "3 of 3 seeds"  # the rows after it ran
    bad = rows["one-bad"]
    assert bad["seeds"] == [0, 2] and bad["diverged"] == [1] and bad["verdict"] == "misses: seed 1 diverged"
    assert "provisional" not in bad["verdict"]  # every seed has ended
    monkeypatch.setattr(entry, "fit", real_fit)
    again = {r["run"]: r for r in run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)}
    assert {k: (r["status"], r["verdict"]) for k, r in again.items()} == \
        {k: (r["status"], r["verdict"]) for k, r in rows.items()}


def test_a_divergence_the_loop_did_not_mark_is_raised_not_tabulated(tmp_path, monkeypatch):
    """Only the training loop's divergence (diverged.json) is a seed's outcome; any other FloatingPointError
    (e.g. noise pretraining's) would otherwise read as 'not run'."""
    from nowt.reproduce import entry

    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=2000),
                        runs={"bp": {"rule": "bp"}}, published={"bp": {"best_test_accuracy": 50.0}})

    def unmarked(cfg, **kw):
        raise FloatingPointError("noise pretraining loss became nan at step 3; lower lr")

    monkeypatch.setattr(entry, "fit", unmarked)
    with pytest.raises(FloatingPointError, match="noise pretraining"):
        run_reproduction(tiny, out_dir=tmp_path, progress=False)


def test_a_metric_the_paper_measures_otherwise_is_tabulated_without_a_verdict(tmp_path, monkeypatch):
    """Bartunov's train error (ours a running error, the paper's an evaluation after training) and Nøkland's
    best epoch (picked on the test set) got "matches"/"misses" like comparable numbers. A metric an entry
    lists in `unjudged` is shown, gets no verdict, says why, and is never counted in the READMEs."""
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=50),
                        runs={"fa": {"rule": "fa"}},
                        published={"fa": {"final_test_error": 100.0, "best_test_error": 100.0}},
                        unjudged={"best_test_error": "picked on the test set"}, seeds=(0,))
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    monkeypatch.setattr(reproduce, "COMMITTED", {"tiny": "tiny"})
    root = tmp_path / "results"
    tiny.run(root / "tiny", progress=False)
    rows = {r["metric"]: r
            for r in run_reproduction(tiny, out_dir=root / "tiny", gather=True, progress=False)}
    assert rows["final_test_error"]["verdict"].startswith("misses by -")  # far from 100: judged
    best = rows["best_test_error"]
    assert best["verdict"] == "no verdict (see the notes)" and best["values"]
    text = (root / "tiny" / "RESULTS.md").read_text()
    assert "| no verdict (see the notes) |" in text
    assert "Tabulated without a verdict: **best_test_error**: picked on the test set." in text
    summary = reproduce.verdict_summary(root).splitlines()[2]
    assert summary == "| [tiny](results/tiny/RESULTS.md) | 1 | 0 | 1 | 0 / 0 | 0 |"  # one cell, one miss
    assert "best_test_error" not in reproduce.verdicts(root)
