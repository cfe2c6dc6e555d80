"""The reproduction registry holds the papers' numbers and runs a table end to end."""

import json
import math

import pytest

from nowt import reproduce
from nowt.reproduce import (
    METRICS,
    REPRODUCTIONS,
    Analysis,
    Reproduction,
    known_models,
    results_table,
    run_config,
    run_reproduction,
)

TABLES = {name: e for name, e in REPRODUCTIONS.items() if isinstance(e, Reproduction)}


def test_every_reproduction_builds_valid_configs_and_names_known_metrics(tmp_path):
    assert {"akrout2019", "akrout2019-cifar10", "akrout2019-imagenet", "bartunov2018-mnist-fc",
            "bartunov2018-mnist-lc", "bartunov2018-cifar-fc", "bartunov2018-cifar-lc",
            "bartunov2018-imagenet", "nokland2016", "biotorch-mnist",
            "biotorch-cifar10", "cheon2024", "song2021", "vit-rules"} <= set(REPRODUCTIONS)
    for repro in TABLES.values():
        assert set(repro.published) <= set(repro.runs), repro.name
        assert len(repro.seeds) >= 3 and set(repro.explorations) <= set(repro.runs), repro.name
        for label in repro.runs:
            for quick in (False, True):
                for seed in repro.seeds:
                    cfg = run_config(repro, label, quick, tmp_path, seed)
                    assert cfg.out_dir == str(tmp_path / label / f"seed{seed}") and cfg.seed == seed
                cfg.validate()  # what `fit` checks first: e.g. a rule option given to another rule's run
            assert set(repro.published.get(label, {})) <= set(METRICS)


@pytest.mark.parametrize(("name", "run", "metric", "value"), [
    ("akrout2019", "fa", "output_angle", 40.0), ("akrout2019", "kp", "best_test_accuracy", 98.47),
    ("akrout2019-cifar10", "wm", "best_test_accuracy", 52.40),
    ("bartunov2018-mnist-fc", "bp", "best_test_error", 1.48),
    ("bartunov2018-cifar-lc", "bp-convnet", "best_test_error", 31.87),
    ("bartunov2018-imagenet", "fa", "best_top5_error", 82.54),
    ("nokland2016", "dfa", "best_test_error", 1.45),
    ("biotorch-mnist", "dfa", "best_test_error", 1.61),
    ("biotorch-cifar10", "fa", "test_error_at_best_validation", 32.16),
])
def test_published_numbers_match_the_papers(name, run, metric, value):
    assert REPRODUCTIONS[name].published[run][metric] == value


def test_metrics_read_histories():
    h = [{"test_accuracy": 90.0, "test_top1_error": 10.0, "test_top5_error": 2.0, "train_accuracy": 91.0,
          "weight_angles": {"1": 80.0, "3": 30.0}, "val_accuracy": 80.0},
         {"test_accuracy": 89.0, "test_top1_error": 11.0, "test_top5_error": 1.0, "train_accuracy": 99.5,
          "weight_angles": {"1": 70.0, "3": 20.0}, "test_bpc": 3.5, "val_accuracy": 81.0}]
    got = {name: fn(h) for name, fn in METRICS.items()}
    assert got == {"best_test_accuracy": 90.0, "final_test_accuracy": 89.0, "best_test_error": 10.0,
                   "final_test_error": 11.0, "final_train_error": 0.5, "best_top5_error": 1.0,
                   "final_test_bpc": 3.5, "output_angle": 20.0, "hidden_angle": 70.0,
                   "test_error_at_best_validation": 11.0}  # the epoch of the best validation, not test


def test_run_reproduction_sets_ours_beside_published_and_skips_what_is_missing(tmp_path):
    repro = Reproduction(
        name="tiny", paper="Tiny 2026", table="Table 0",
        config=dict(dataset="synthetic", hidden=(16,), epochs=5, batch_size=50, lr=0.05),
        runs={"fa": {"rule": "fa"}, "ghost": {"rule": "no-such-rule"}, "tp": {"rule": "dtp"}},
        published={"fa": {"best_test_accuracy": 95.0, "output_angle": 40.0},
                   "ghost": {"best_test_error": 1.0}},
        quick=dict(epochs=1))
    rows = run_reproduction(repro, quick=True, out_dir=tmp_path, progress=False)
    fa = {r["metric"]: r for r in rows if r["run"] == "fa"}
    assert fa["best_test_accuracy"]["epochs"] == [1] and fa["best_test_accuracy"]["status"] == "1 of 1 seeds"
    assert fa["best_test_accuracy"]["difference"] == pytest.approx(fa["best_test_accuracy"]["ours"] - 95.0)
    assert 0 < fa["output_angle"]["ours"] < 90
    ghost = next(r for r in rows if r["run"] == "ghost")
    assert "not in this install" in ghost["status"] and math.isnan(ghost["ours"])
    assert (tmp_path / "fa" / "seed0" / "metrics.jsonl").is_file() and not (tmp_path / "ghost").exists()
    table = results_table(rows)
    assert "| fa | best_test_accuracy | 95.00 |" in table
    assert "| ghost | best_test_error | 1.00 | – |" in table
    with pytest.raises(ValueError, match="has no run"):
        run_reproduction(repro, quick=True, out_dir=tmp_path, only=["nope"], progress=False)
    with pytest.raises(ValueError, match="registers seeds 0, 1, 2; not \\[7\\]"):
        run_reproduction(repro, out_dir=tmp_path, seeds=[7], progress=False)
    with pytest.raises(ValueError, match="unknown reproduction"):
        reproduce.get("nope")


def test_describe_lists_paper_table_and_numbers():
    text = reproduce.describe(REPRODUCTIONS["akrout2019"])
    assert "Akrout" in text and "784-500-10" in text and "output_angle 3.8" in text and "--quick" in text


def test_analysis_reproductions_are_listed_and_run(tmp_path, capsys):
    from nowt import reproduce
    from nowt.cli import main

    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "cheon2024:" in listing and "song2021:" in listing
    assert main(["reproduce", "song2021", "--quick", "--out", str(tmp_path / "song")]) == 0
    assert (tmp_path / "song" / "RESULTS.md").exists()
    analyses = {n for n, e in reproduce.REPRODUCTIONS.items() if isinstance(e, reproduce.Analysis)}
    assert analyses == {"cheon2024", "cheon2024-conditions", "song2021"}


def test_every_run_names_a_model_and_rule_that_exist(tmp_path):
    """No row of a reproduction is "skipped" for a model or rule nowt lacks (the BP convnets included)."""
    import nowt

    for repro in TABLES.values():
        for label in repro.runs:
            cfg = run_config(repro, label, False, tmp_path)
            assert cfg.model in known_models(), (repro.name, label, cfg.model)
            assert cfg.rule in nowt.list_rules(), (repro.name, label, cfg.rule)
    assert REPRODUCTIONS["bartunov2018-mnist-lc"].runs["bp-convnet"]["model"] == "mnist_conv"


def test_bp_convnets_share_the_lc_networks_architecture():
    import torch

    from nowt.targetprop.networks import cifar_conv, cifar_lc, mnist_conv, mnist_lc

    for conv, lc in ((mnist_conv, mnist_lc), (cifar_conv, cifar_lc)):
        a, b = conv(), lc()
        assert isinstance(a[0][0], torch.nn.Conv2d) and len(a) == len(b)
        x = torch.randn(2, *a.input_shape)
        for block_a, block_b in zip(a, b, strict=True):  # every block keeps the LC block's output shape
            xa, x = block_a(x), block_b(x)
            assert xa.shape == x.shape
            x = xa


def test_run_writes_results_md_with_command_and_published_numbers(tmp_path, monkeypatch):
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=3, batch_size=50),
                        runs={"bp": {"rule": "bp"}}, published={"bp": {"best_test_accuracy": 99.0}},
                        quick=dict(epochs=1))
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    path = reproduce.run("tiny", tmp_path / "out", quick=True, progress=False)
    text = path.read_text()
    assert path.name == "RESULTS.md" and "`nowt reproduce tiny --quick`" in text and "Date: " in text
    assert "| bp | best_test_accuracy | 99.00 |" in text and "![learning curves](curves.png)" in text
    assert (tmp_path / "out" / "curves.png").is_file()
    assert reproduce.default_out("tiny", quick=True).as_posix() == "runs/reproduce/tiny-quick"


def test_analyses_refuse_runs_and_unknown_options(tmp_path, monkeypatch):
    song = REPRODUCTIONS["song2021"]
    assert isinstance(song, Analysis) and "two-layer" in reproduce.describe(song)
    with pytest.raises(ValueError, match="no runs to pick"):
        reproduce.run("song2021", tmp_path, only=["fa"])
    with pytest.raises(ValueError, match="takes no device"):
        reproduce.run("song2021", tmp_path, device="cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun every rank computed it all and wrote RESULTS.md
    with pytest.raises(ValueError, match="song2021 is an analysis, computed in one process: run it without"):
        reproduce.run("song2021", tmp_path, quick=True)
    assert not (tmp_path / "RESULTS.md").exists()


def test_bartunov_rows_take_the_papers_table5_configuration(tmp_path):
    """Every registered Table 1 row runs its column's Table 5 values as printed (AO-SDTP with SDTP's):
    forward Adam for all, the inverses' Adam and sigma for target propagation, alpha for DTP. What was
    changed after a result was seen is an exploration: its registered row plus the change, nothing else."""
    from nowt.reproduce.bartunov2018 import EXPLORATIONS, TABLE5
    from nowt.reproduce.entry import run_config
    for name in ("bartunov2018-mnist-fc", "bartunov2018-mnist-lc", "bartunov2018-cifar-fc",
                 "bartunov2018-cifar-lc", "bartunov2018-imagenet"):
        entry = reproduce.get(name)
        column = TABLE5[name.removeprefix("bartunov2018-")]
        explorations = EXPLORATIONS.get(name.removeprefix("bartunov2018-"), {})
        assert set(entry.explorations) == set(explorations)
        for label in entry.runs:
            if label in explorations:
                row, overrides, _ = explorations[label]
                assert entry.runs[label] == {**entry.runs[row], **overrides} != entry.runs[row]
                continue
            cfg = run_config(entry, label, False, tmp_path)
            source = label.replace("ao-sdtp", "sdtp")
            assert (cfg.lr, *cfg.adam_betas, cfg.adam_eps) == column["forward"][source], (name, label)
            if cfg.rule in ("dtp", "sdtp", "ao-sdtp"):
                i = ("dtp-parallel", "dtp-alternating", "sdtp-parallel", "sdtp-alternating").index(source)
                ours = (cfg.inverse_lr, *cfg.inverse_betas, cfg.inverse_eps)
                assert ours == column["inverse"][i]
                assert cfg.sigma == column["sigma"][i]
                assert cfg.rule != "dtp" or cfg.alpha == column["alpha"][i]
    fc = reproduce.get("bartunov2018-mnist-fc")
    assert run_config(fc, "dtp-parallel", False, tmp_path).lr == 7.57e-4
    assert run_config(fc, "sdtp-parallel", False, tmp_path).inverse_betas == (0.99, 0.95)  # as printed
    assert run_config(fc, "sdtp-parallel-beta1-0.9", False, tmp_path).inverse_betas == (0.9, 0.95)
    assert run_config(fc, "fa", False, tmp_path).init == "default"  # as first registered
    assert run_config(reproduce.get("bartunov2018-mnist-lc"), "fa", False, tmp_path).init == "xavier"


def test_gather_tabulates_the_runs_in_a_folder_without_training(tmp_path, monkeypatch):
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=2, batch_size=50),
                        runs={"bp": {"rule": "bp"}, "fa": {"rule": "fa"}, "kp": {"rule": "kp"}},
                        published={r: {"best_test_accuracy": 99.0} for r in ("bp", "fa", "kp")})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    rows = run_reproduction(tiny, out_dir=tmp_path, only=["bp", "fa"], progress=False)
    trained = {r["run"]: r for r in rows}
    for seed in range(3):
        (tmp_path / "bp" / f"seed{seed}" / "checkpoint.pt").unlink()  # committed results hold only logs
    lines = (tmp_path / "fa" / "seed0" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "fa" / "seed0" / "metrics.jsonl").write_text(lines[0] + "\n")  # fa seed 0 stopped early
    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    rows = {r["run"]: r for r in run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == mtimes  # trained nothing
    assert rows["bp"]["status"] == "3 of 3 seeds" and rows["bp"]["ours"] == trained["bp"]["ours"]
    assert rows["fa"]["status"] == "2 of 3 seeds (seed 0: unfinished (1 of 2 epochs))"
    assert rows["fa"]["epochs"] == [2, 2]
    assert rows["kp"]["status"].startswith("0 of 3 seeds (seed 0: not run") and math.isnan(rows["kp"]["ours"])
    from nowt.cli import main
    assert main(["reproduce", "tiny", "--gather", "--out", str(tmp_path), "--no-progress"]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "`nowt reproduce tiny --gather --out" in text and "| kp | best_test_accuracy | 99.00 | – |" in text
    assert "| fa/seed0 |" in text.split("## Our runs")[1]
    metrics = tmp_path / "bp" / "seed1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([*lines, lines[-1].replace('"epoch": 2', '"epoch": 3')]) + "\n")
    with pytest.raises(ValueError, match="holds 3 epochs, more than the row's 2"):  # lengthened: another run
        run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)
    metrics.write_text("\n".join(lines) + "\n")
    config = tmp_path / "bp" / "seed0" / "config.json"
    config.write_text(config.read_text().replace('"hidden": [\n  8\n ]', '"hidden": [\n  9\n ]'))
    with pytest.raises(ValueError, match="another configuration.*hidden"):
        run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)
    config.write_text(config.read_text().replace('"hidden": [\n  9\n ]', '"hidden": [\n  8\n ]'))
    provenance = tmp_path / "bp" / "seed2" / "provenance.jsonl"  # seed 2 trained from another --data-dir
    start = json.loads(provenance.read_text().splitlines()[0])
    start["data"]["train_labels"] += 17.0
    provenance.write_text(json.dumps(start) + "\n")
    with pytest.raises(ValueError, match=r"row bp: seed 2 .* on other data than seed 0 \(train_labels"):
        run_reproduction(tiny, out_dir=tmp_path, gather=True, progress=False)
    plain = Analysis(name="plain", paper="P", table="T",
                     function=lambda out_dir, quick, progress, command: {})
    monkeypatch.setitem(REPRODUCTIONS, "plain", plain)  # an analysis without raw data to gather
    with pytest.raises(ValueError, match="analysis"):
        reproduce.run("plain", tmp_path / "plain", gather=True, progress=False)


def test_a_table_picks_no_epoch_on_the_test_set_unless_its_paper_does():
    """A table whose lr is chosen off the test set must not then pick each run's epoch on it, and a row with
    no published number (no paper protocol to follow) reports its last epoch."""
    from nowt.reproduce.entry import table_metrics

    for repro in TABLES.values():
        for label in repro.runs:
            if repro.lr_grid or not repro.published.get(label):
                assert all(m.startswith("final_") for m in table_metrics(repro, label)), (repro.name, label)


def test_an_experiment_without_published_numbers_states_no_verdict_rule(tmp_path, monkeypatch):
    tiny = Reproduction(name="tiny", paper="nowt's own", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=50),
                        runs={"fa": {"rule": "fa"}}, published={})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    text = reproduce.run("tiny", tmp_path, seeds=[0], progress=False).read_text()
    assert "there is no published number, so no verdict" in text and "**matches** when" not in text


def test_training_a_subset_of_rows_keeps_every_row_in_the_table(tmp_path, monkeypatch):
    """`nowt reproduce NAME --runs fa` trains fa alone, and RESULTS.md still lists the rows it did not train
    (as their runs stand), rather than a table of fa alone."""
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=1, batch_size=50),
                        runs={"bp": {"rule": "bp"}, "fa": {"rule": "fa"}},
                        published=dict.fromkeys(("bp", "fa"), {"best_test_accuracy": 50.0}))
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    reproduce.run("tiny", tmp_path, only=["bp"], seeds=[0], progress=False)
    text = reproduce.run("tiny", tmp_path, only=["fa"], seeds=[0], progress=False).read_text()
    assert "| bp | best_test_accuracy |" in text and "| fa | best_test_accuracy |" in text
    assert "| bp/seed0 | bp |" in text  # bp's run, read, in the runs table too


def test_seeds_the_selected_rows_do_not_run_are_refused(tmp_path, monkeypatch, capsys):
    """--quick and the explorations run the first seed alone: `--seeds 1` there trained nothing and exited 0,
    or failed with "[Errno 2] ... RESULTS.md" where --out did not exist. Refused, naming the reason; a
    folder a run leaves empty (every row skipped) still gets its RESULTS.md; --gather of a missing folder
    and --gather with --seeds (it trains nothing) are refused."""
    from nowt.cli import main

    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=2, batch_size=50),
                        runs={"fa": {"rule": "fa"}, "fa-wide": {"rule": "fa", "hidden": (16,)}},
                        published={}, quick=dict(epochs=1), explorations={"fa-wide": "after fa missed"})
    monkeypatch.setitem(REPRODUCTIONS, "tiny", tiny)
    out = tmp_path / "absent"
    with pytest.raises(ValueError, match=r"--seeds 1: .*run only seed 0: --quick runs the first seed alone"):
        reproduce.run("tiny", out, quick=True, seeds=[1], progress=False)
    with pytest.raises(ValueError, match=r"--seeds 1,2: .*run only seed 0: fa-wide is an exploration"):
        reproduce.run("tiny", out, only=["fa-wide"], seeds=[1, 2], progress=False)
    assert main(["reproduce", "tiny", "--quick", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--quick runs the first seed alone" in err and "Errno" not in err and not out.exists()
    with pytest.raises(ValueError, match="--gather reads the runs in .*absent, which does not exist"):
        reproduce.run("tiny", out, gather=True, progress=False)
    with pytest.raises(ValueError, match="--gather trains nothing"):
        reproduce.run("tiny", tmp_path, gather=True, seeds=[0], progress=False)
    rows = run_reproduction(tiny, quick=True, out_dir=out, seeds=[0], progress=False)  # what they run
    assert {r["status"] for r in rows} == {"1 of 1 seeds"}
    ghost = Reproduction(name="ghost", paper="G", table="T", config=dict(dataset="synthetic"),
                         runs={"g": {"rule": "no-such-rule"}}, published={})
    monkeypatch.setitem(REPRODUCTIONS, "ghost", ghost)
    assert "not in this install" in reproduce.run("ghost", tmp_path / "new", progress=False).read_text()
