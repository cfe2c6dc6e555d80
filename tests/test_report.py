"""Reports render a markdown table and real PNG plots from run directories."""

import json
import math
import shutil

import pytest

from nowt.report import load_run, markdown_table, write_report


def write_run(path, rule: str, accs: list[float], angles: bool | str = True, collapsed: tuple = ()) -> None:
    """A run's folder; `angles` "update" logs update angles alone (target propagation: no B)."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"rule": rule, "epochs": len(accs)}))  # a finished run
    lines = []
    for i, acc in enumerate(accs):
        w = {"0": 80.0 - 10 * i, "2": 40.0 - 5 * i} if angles is True else {}
        u = {"0": 60.0 - 10 * i, "2": 0.0} if angles else {}
        lines.append(json.dumps({"epoch": i + 1, "train_loss": 1.0 / (i + 1), "train_accuracy": acc + 1,
                                 "test_loss": 1.2 / (i + 1), "test_accuracy": acc,
                                 "test_top1_error": 100 - acc, "test_top5_error": 0.5, "weight_angles": w,
                                 "update_angles": u, "seconds": 2.0,
                                 **({"collapsed": i + 1 in collapsed} if collapsed else {})}))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_report_writes_table_and_pngs(tmp_path):
    write_run(tmp_path / "runs" / "fa", "fa", [90.0, 95.5, 95.25])
    write_run(tmp_path / "runs" / "dtp", "dtp", [80.0, 85.0], angles=False)
    md = write_report([tmp_path / "runs" / "fa", tmp_path / "runs" / "dtp"], tmp_path / "rep")
    text = md.read_text()
    # best 95.5, final 95.25, output layer 40 - 5 * 2 degrees
    assert "| fa | fa | 3 | 95.50 | 95.25 | 96.25 | 0.50 | 30.0 | 2.0 |" in text
    assert "| dtp | dtp | 2 | 85.00 | 85.00 | 86.00 | 0.50 | – | 2.0 |" in text  # no angle: a dash
    for png in ("curves.png", "alignment.png"):
        data = (tmp_path / "rep" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f"]({png})" in text


def test_seconds_per_epoch_is_the_median_so_a_paused_epoch_does_not_count_as_training(tmp_path):
    write_run(tmp_path / "fa", "fa", [90.0, 91.0, 92.0])
    metrics = tmp_path / "fa" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records[1]["seconds"] = 4766.0  # a run stopped (SIGSTOP) for 79 minutes during its second epoch
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert load_run(tmp_path / "fa").summary()["seconds_per_epoch"] == 2.0  # the mean would say 1590
    assert "s/epoch (median)" in write_report([tmp_path / "fa"], tmp_path / "rep").read_text()


def test_report_without_angles_has_no_alignment_plot_and_missing_runs_are_clear(tmp_path):
    write_run(tmp_path / "dtp", "dtp", [80.0], angles=False)
    text = write_report([tmp_path / "dtp"], tmp_path / "rep").read_text()
    assert "alignment" not in text and not (tmp_path / "rep" / "alignment.png").exists()
    run = load_run(tmp_path / "dtp")
    assert math.isnan(run.summary()["output_angle"])
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        load_run(tmp_path / "nothing")
    with pytest.raises(ValueError, match="at least one"):
        write_report([], tmp_path / "rep")


def test_markdown_table_formats_floats_and_missing_values():
    table = markdown_table(["a", "b", "c"], [["x", 1.234, math.nan], ["y", 2, "–"]], digits=1)
    assert table == "| a | b | c |\n|---|---|---|\n| x | 1.2 | – |\n| y | 2 | – |\n"


def test_report_names_the_epoch_a_run_collapsed_at(tmp_path):
    write_run(tmp_path / "fa", "fa", [90.0, 91.0, 10.0, 10.0], collapsed=(3, 4))
    write_run(tmp_path / "bp", "bp", [90.0, 95.0], collapsed=(99,))  # recorded, never collapsed
    text = write_report([tmp_path / "fa", tmp_path / "bp"], tmp_path / "rep").read_text()
    assert "- fa: from epoch 3 the model gave one output for every probe input" in text
    assert "that epoch's mean training loss: 0.333" in text  # epoch 3's, where a blow-up would show
    assert "- bp:" not in text


def test_a_one_epoch_run_is_drawn_as_points_on_whole_epochs(tmp_path, monkeypatch):
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    write_run(tmp_path / "fa", "fa", [90.0])
    write_run(tmp_path / "bp", "bp", [90.0, 91.0])
    report.plot_learning_curves([load_run(tmp_path / "bp")], tmp_path / "curves.png")
    two_epochs = figures.pop().axes[0]
    low, high = two_epochs.get_xlim()
    assert low < 1 and high > 2  # both epochs inside the axes
    report.plot_learning_curves([load_run(tmp_path / "fa")], tmp_path / "curves.png")
    report.plot_alignment([load_run(tmp_path / "fa")], tmp_path / "alignment.png")
    for fig in figures:
        for ax in fig.axes:
            assert ax.lines and all(line.get_marker() not in (None, "None", "") for line in ax.lines)
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert 1 in ticks and all(float(t).is_integer() for t in ticks)
    legends = [ax.get_legend() for ax in figures[1].axes if ax.get_legend()]
    assert legends and all(legend.get_title().get_text() == "layer" for legend in legends)


def test_only_seeds_of_one_recipe_are_grouped(tmp_path):
    from nowt.report import seed_groups

    for name, seed, lr in [("a", 0, 0.1), ("b", 1, 0.1), ("c", 0, 0.2), ("d", 0, 0.1), ("e", 1, 0.1)]:
        write_run(tmp_path / name, "fa", [90.0])
        if name in "abc":
            (tmp_path / name / "config.json").write_text(json.dumps({"rule": "fa", "seed": seed, "lr": lr}))
        else:
            (tmp_path / name / "config.json").unlink()  # nothing known of the recipe: never grouped
    groups = seed_groups([load_run(tmp_path / n) for n in "abcde"])
    assert [[r.name for r in g] for g in groups] == [["a", "b"], ["c"], ["d"], ["e"]]


def test_an_option_the_rule_does_not_have_does_not_split_its_seeds(tmp_path):
    """akrout2019's fa seed 0 was saved when mirror_every's default was 2, seeds 1-2 with 8: fa has no mirror,
    so they are seeds of one recipe; for wm, whose option it is, they are not."""
    from nowt.report import seed_groups

    for name, rule, seed, every in [("fa0", "fa", 0, 2), ("fa1", "fa", 1, 8), ("wm0", "wm", 0, 2),
                                    ("wm1", "wm", 1, 8)]:
        write_run(tmp_path / name, rule, [90.0])
        (tmp_path / name / "config.json").write_text(json.dumps({"rule": rule, "seed": seed,
                                                                 "mirror_every": every}))
    groups = seed_groups([load_run(tmp_path / n) for n in ("fa0", "fa1", "wm0", "wm1")])
    assert [[r.name for r in g] for g in groups] == [["fa0", "fa1"], ["wm0"], ["wm1"]]


def test_seeds_of_one_recipe_share_a_colour_and_one_legend_entry(tmp_path, monkeypatch):
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    for name, seed, lr in [("a", 0, 0.1), ("b", 1, 0.1), ("c", 0, 0.2)]:
        write_run(tmp_path / name, "fa", [90.0, 91.0])
        (tmp_path / name / "config.json").write_text(json.dumps({"rule": "fa", "seed": seed, "lr": lr}))
    report.plot_learning_curves([load_run(tmp_path / n) for n in "abc"], tmp_path / "curves.png")
    err, loss = figures[0].axes
    colours = [line.get_color() for line in loss.lines]
    assert colours[0] == colours[1] != colours[2]
    assert [t.get_text() for t in figures[0].legends[0].get_texts()] == ["fa, 2 seeds", "c"]


def test_seed_groups_of_one_rule_are_told_apart_and_an_undefined_angle_is_a_dash(tmp_path):
    from nowt.report import seed_summary_table

    recipes = {"m0": ("mnist", []), "m1": ("mnist", []), "b0": ("mnist", ["blocks.*"]),
               "b1": ("mnist", ["blocks.*"]), "f0": ("fashion", []), "f1": ("fashion", [])}
    for name, (dataset, blocks) in recipes.items():
        write_run(tmp_path / name, "dfa", [50.0 + int(name[1])], angles=False)  # dfa: no output angle
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"rule": "dfa", "seed": int(name[1]), "dataset": dataset, "blocks": blocks, "epochs": 1}))
    write_run(tmp_path / "bp0", "bp", [90.0])
    write_run(tmp_path / "bp1", "bp", [92.0])
    for seed in (0, 1):
        config = {"rule": "bp", "seed": seed, "epochs": 1}
        (tmp_path / f"bp{seed}" / "config.json").write_text(json.dumps(config))
    table = seed_summary_table([load_run(tmp_path / n) for n in [*recipes, "bp0", "bp1"]])
    assert '| dfa (blocks=[], dataset=mnist) | 2 | 50.50 ± 0.71 | 50.50 ± 0.71 | – |' in table
    assert '| dfa (blocks=["blocks.*"], dataset=mnist) | 2 |' in table
    assert '| dfa (blocks=[], dataset=fashion) | 2 |' in table
    assert "| bp | 2 | 91.00 ± 1.41 |" in table  # the only bp recipe: its rule alone


def test_a_field_a_run_predates_counts_as_its_default_when_grouping_and_naming(tmp_path):
    from nowt.report import group_labels, seed_groups

    configs = {"old0": {"rule": "dfa", "seed": 0}, "new1": {"rule": "dfa", "seed": 1, "blocks": []},
               "b0": {"rule": "dfa", "seed": 0, "blocks": ["blocks.*"]},
               "b1": {"rule": "dfa", "seed": 1, "blocks": ["blocks.*"]}}
    for name, config in configs.items():
        write_run(tmp_path / name, "dfa", [50.0])
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    groups = seed_groups([load_run(tmp_path / n) for n in configs])
    assert [[r.name for r in g] for g in groups] == [["old0", "new1"], ["b0", "b1"]]
    assert group_labels(groups) == ["dfa (blocks=[])", 'dfa (blocks=["blocks.*"])']


def _seed_run(path, seed: int, accs: list[float], epochs: int = 2, rule: str = "fa") -> None:
    write_run(path, rule, accs)
    (path / "config.json").write_text(json.dumps({"rule": rule, "seed": seed, "epochs": epochs}))


def test_a_seed_that_stopped_short_is_left_out_of_the_mean_and_named(tmp_path):
    from nowt.report import seed_summary_table

    _seed_run(tmp_path / "s0", 0, [40.0, 50.0])
    _seed_run(tmp_path / "s1", 1, [42.0, 52.0])
    _seed_run(tmp_path / "s2", 2, [10.0])  # killed after 1 of 2 epochs
    table = seed_summary_table([load_run(tmp_path / f"s{s}") for s in range(3)])
    assert "| fa | 2 of 3 (seed 2 stopped at epoch 1 of 2) | 51.00 ± 1.41 | 51.00 ± 1.41 | 35.00 ± 0.00 |" \
        in table


def test_a_run_named_twice_or_a_seed_run_twice_counts_once(tmp_path):
    from nowt.report import seed_summary_table

    _seed_run(tmp_path / "a", 0, [40.0, 50.0])
    _seed_run(tmp_path / "b", 1, [42.0, 52.0])
    text = write_report([tmp_path / "a", tmp_path / "a", tmp_path / "b" / ".." / "a"],
                        tmp_path / "rep").read_text()
    assert "± " not in text and text.count("| a | fa |") == 1 and text.count("`") == 2  # one run: no mean
    text = write_report([tmp_path / "a", tmp_path / "b", tmp_path / "a"], tmp_path / "rep").read_text()
    assert "| fa | 2 | 51.00 ± 1.41 |" in text
    shutil.copytree(tmp_path / "a", tmp_path / "copy-of-a")  # the same recipe and seed in another directory
    table = seed_summary_table([load_run(tmp_path / n) for n in ("a", "b", "copy-of-a")])
    assert "| fa | 2 of 3 (seed 0 again in copy-of-a, counted once) | 51.00 ± 1.41 |" in table


def test_mean_std_formats_as_every_table_did(tmp_path):
    import random
    import statistics

    from nowt.report import format_mean_std, mean_std

    assert mean_std([1.0, 2.0, 6.0]) == (3.0, statistics.stdev([1.0, 2.0, 6.0]))
    assert mean_std([4.5]) == (4.5, 0.0)
    assert all(math.isnan(v) for v in (*mean_std([]), *mean_std([1.0, math.nan])))
    assert format_mean_std([1.0, 2.0]) == "1.50 ± 0.71" and format_mean_std([90.125], 1) == "90.1"
    assert format_mean_std([]) == format_mean_std([1.0, math.nan]) == format_mean_std([math.nan]) == "–"
    assert format_mean_std(iter([1.0, 2.0])) == "1.50 ± 0.71"  # any iterable, read once
    # the text of the formatters it replaced, for the same inputs: report.py's and cheon2024.py's (fmean, as
    # the reproduction tables), and vit_rules.py's (statistics.mean: the same wherever the mean is not a tie
    # at the last digit, as with its three seeds of accuracies on 10,000 test images)
    def report_spread(values):
        return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else \
            f"{values[0]:.2f}"

    def vit_mean_sd(values):
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else \
            f"{values[0]:.2f}"

    def cheon_fmt(values, digits):
        return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    rng = random.Random(0)
    for _ in range(3000):
        values = [rng.uniform(0, 100) for _ in range(rng.choice([1, 2, 3, 5]))]
        values = [round(v, rng.choice([2, 4])) for v in values] if rng.random() < 0.5 else values
        assert format_mean_std(values) == report_spread(values)
        if len(values) > 1:
            assert format_mean_std(values, 1) == cheon_fmt(values, 1)
            assert format_mean_std(values, 3) == cheon_fmt(values, 3)
        accuracies = [rng.randrange(10_001) / 100 for _ in range(3)]
        assert format_mean_std(accuracies) == vit_mean_sd(accuracies)


def test_a_damaged_metrics_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    from nowt.cli import main

    run = tmp_path / "run"
    run.mkdir()
    good = '{"epoch": 1, "test_accuracy": 50.0, "train_accuracy": 40.0}\n'
    for text, why in ((good + '{"epoch": 2, "test_acc', "line 2: not a JSON record"),
                      (good + "[1, 2]\n", "line 2: not an epoch record (no epoch, test_accuracy)"),
                      ('{"epoch": 1}\n', "line 1: not an epoch record (no test_accuracy)")):
        (run / "metrics.jsonl").write_text(text)
        assert main(["report", str(run)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nowt report: error: ") and f"metrics.jsonl, {why}" in err
        assert "\n" not in err
    (run / "metrics.jsonl").write_text(good)
    (run / "config.json").write_text("[1]")
    assert main(["report", str(run)]) == 2
    assert "config.json holds a JSON list" in capsys.readouterr().err


def test_alignment_figure_has_a_column_per_recipe_and_a_line_per_seed(tmp_path, monkeypatch):
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    for name, rule, seed in [("fa0", "fa", 0), ("fa1", "fa", 1), ("fa2", "fa", 2), ("kp0", "kp", 0)]:
        write_run(tmp_path / name, rule, [90.0, 91.0])
        (tmp_path / name / "config.json").write_text(json.dumps({"rule": rule, "seed": seed}))
    report.plot_alignment([load_run(tmp_path / n) for n in ("fa0", "fa1", "fa2", "kp0")], tmp_path / "a.png")
    axes = figures.pop().axes
    assert len(axes) == 4  # 2 recipes x (B vs W, update vs backprop)
    titles = sorted(ax.get_title() for ax in axes)
    assert titles == ["fa, 3 seeds: B vs W", "fa, 3 seeds: update vs backprop", "kp0: B vs W",
                      "kp0: update vs backprop"]
    fa_top = next(ax for ax in axes if ax.get_title() == "fa, 3 seeds: B vs W")
    assert len(fa_top.lines) == 3 * 2  # a line per seed per layer
    assert [t.get_text() for t in fa_top.get_legend().get_texts()] == ["0", "2"]  # a layer named once
    assert len({line.get_color() for line in fa_top.lines}) == 2  # a colour per layer, not per seed


def test_target_propagation_has_update_angles_drawn_and_no_b_said_so(tmp_path, monkeypatch):
    """Target propagation logs update angles (no B): its runs had no alignment figure at all."""
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    write_run(tmp_path / "dtp", "dtp", [80.0, 85.0], angles="update")
    write_run(tmp_path / "fa", "fa", [90.0, 91.0])
    report.plot_alignment([load_run(tmp_path / n) for n in ("dtp", "fa")], tmp_path / "a.png")
    axes = {ax.get_title(): ax for ax in figures.pop().axes}
    top, bottom = axes["dtp: B vs W"], axes["dtp: update vs backprop"]
    assert not top.lines and [t.get_text() for t in top.texts] == ["no feedback weights"]
    assert len(bottom.lines) == 2 and [t.get_text() for t in bottom.get_legend().get_texts()] == ["0", "2"]
    assert axes["fa: B vs W"].get_legend() is not None and not axes["fa: B vs W"].texts
    assert axes["fa: update vs backprop"].get_legend() is None
    # dfa: a B per layer, of the output's width, so no angle to W (nan): said so, the legend below
    write_run(tmp_path / "dfa", "dfa", [80.0, 85.0])
    metrics = tmp_path / "dfa" / "metrics.jsonl"
    nan = '"weight_angles": {"0": NaN, "2": NaN}'
    metrics.write_text(metrics.read_text().replace('"weight_angles": {"0": 80.0, "2": 40.0}', nan)
                       .replace('"weight_angles": {"0": 70.0, "2": 35.0}', nan))
    report.plot_alignment([load_run(tmp_path / "dfa")], tmp_path / "a.png")
    top, bottom = figures.pop().axes
    assert [t.get_text() for t in top.texts] == ["B and W differ in shape"] and top.get_legend() is None
    assert bottom.get_legend() is not None


def test_alignment_figure_draws_logged_norm_ratios_on_a_log_axis(tmp_path, monkeypatch):
    """`weight_norm_ratios` (||B|| / ||W||, logged per epoch since 2026-12-04) had no figure: a third row of
    panels, per layer, only where a run logged them (older runs keep their two rows)."""
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    write_run(tmp_path / "fa", "fa", [90.0, 91.0])
    write_run(tmp_path / "dtp", "dtp", [80.0, 85.0], angles="update")
    report.plot_alignment([load_run(tmp_path / "fa")], tmp_path / "a.png")
    assert len(figures.pop().axes) == 2  # logged nothing: no third row
    metrics = tmp_path / "fa" / "metrics.jsonl"
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    for i, record in enumerate(lines):
        record["weight_norm_ratios"] = {"0": 0.5 * (i + 1), "2": 4.0}
    metrics.write_text("".join(json.dumps(r) + "\n" for r in lines))
    report.plot_alignment([load_run(tmp_path / n) for n in ("fa", "dtp")], tmp_path / "a.png")
    axes = {ax.get_title(): ax for ax in figures.pop().axes}
    assert len(axes) == 6
    ratio = axes["fa: ||B|| / ||W||"]
    assert ratio.get_yscale() == "log" and ratio.get_ylabel() == "norm ratio"
    assert [list(line.get_ydata()) for line in ratio.lines] == [[0.5, 1.0], [4.0, 4.0]]
    assert [t.get_text() for t in axes["dtp: ||B|| / ||W||"].texts] == ["no feedback weights"]
    # a B whose angle to W is undefined (shapes differ: nan) still has a norm ratio: drawn, not "differ"
    text = metrics.read_text()
    for logged in ('{"0": 80.0, "2": 40.0}', '{"0": 70.0, "2": 35.0}'):
        text = text.replace(f'"weight_angles": {logged}', '"weight_angles": {"0": NaN, "2": NaN}')
    metrics.write_text(text)
    report.plot_alignment([load_run(tmp_path / "fa")], tmp_path / "a.png")
    top, _, ratio = figures.pop().axes
    assert [t.get_text() for t in top.texts] == ["B and W differ in shape"]
    assert len(ratio.lines) == 2 and not ratio.texts


def test_alignment_axes_hold_angles_past_95_degrees(tmp_path, monkeypatch):
    """The axes stopped at 95 degrees: DFA's early angles (96-103 measured) were drawn off the plot."""
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    write_run(tmp_path / "fa", "fa", [90.0, 91.0])
    report.plot_alignment([load_run(tmp_path / "fa")], tmp_path / "a.png")
    assert {ax.get_ylim() for ax in figures.pop().axes} == {(0, 95)}  # all angles under 95: the close view
    metrics = tmp_path / "fa" / "metrics.jsonl"
    early = '"update_angles": {"0": 102.7'  # DFA's first epoch
    metrics.write_text(metrics.read_text().replace('"update_angles": {"0": 60.0', early))
    report.plot_alignment([load_run(tmp_path / "fa")], tmp_path / "a.png")
    assert {ax.get_ylim() for ax in figures.pop().axes} == {(0, 180)}


def test_learning_curves_stay_readable_with_a_diverged_run_and_many_long_names(tmp_path, monkeypatch):
    """bartunov2018's curves.png had its legend inside an axes: twelve long labels squashed both panels to
    nothing; biotorch2021's had a seed's 1e35 loss that flattened every other curve."""
    import nowt.report as report

    figures = []
    monkeypatch.setattr(report, "save", lambda fig, path: figures.append(fig) or path)
    runs = []
    for i in range(12):
        name = f"a-rather-long-row-name-{i}/seed0"
        write_run(tmp_path / name, "fa", [90.0, 91.0])
        (tmp_path / name / "config.json").write_text(json.dumps({"rule": "fa", "lr": i}))
        runs.append(load_run(tmp_path / name, name))
    path = runs[0].history
    path[1]["train_loss"] = 1e35  # one run blew up
    report.plot_learning_curves(runs, tmp_path / "curves.png")
    fig = figures.pop()
    err, loss = fig.axes
    assert not err.get_legend() and not loss.get_legend() and len(fig.legends[0].get_texts()) == 12
    assert len({line.get_color() for line in loss.lines}) == 12  # no two rows share a colour
    assert "clipped" in loss.get_title()
    assert loss.get_ylim()[1] == pytest.approx(10.0)  # 10 x the median first-epoch loss
    fig.canvas.draw()
    for ax in (err, loss):  # the axes kept their size: the legend is outside them
        box = ax.get_window_extent()
        assert box.width > 200 and box.height > 100
    labels = [t.get_text() for t in loss.yaxis.get_ticklabels() if t.get_text()]
    assert "1" in labels and not any("e+" in t or "0.0" == t for t in labels)


def test_seeds_in_a_reproductions_row_folders_are_named_by_the_row(tmp_path):
    from nowt.report import group_labels, seed_groups

    runs = []
    for row, lr in [("dtp-parallel", 0.1), ("dtp-alternating", 0.2)]:
        for seed in range(2):
            name = f"{row}/seed{seed}"
            write_run(tmp_path / name, "dtp", [90.0])
            (tmp_path / name / "config.json").write_text(json.dumps({"rule": "dtp", "seed": seed, "lr": lr}))
            runs.append(load_run(tmp_path / name, name))
    assert group_labels(seed_groups(runs)) == ["dtp-parallel", "dtp-alternating"]  # not "dtp (lr=0.1)"
    assert group_labels(seed_groups(runs[:1] + runs[2:3])) == ["dtp-parallel/seed0", "dtp-alternating/seed0"]
    for run in runs:  # rows of the same leaf name under different parents keep their whole folder
        run.name = ("mnist/" if "parallel" in run.name else "cifar/") + "dfa/" + run.name.rsplit("/", 1)[1]
    assert group_labels(seed_groups(runs)) == ["mnist/dfa", "cifar/dfa"]


def test_seeds_stopped_by_their_patience_count_in_the_mean_and_killed_ones_do_not(tmp_path):
    """nokland2016's and bartunov2018's seed tables said "1 of 3" and showed one seed: the others had ended
    by their stop rule (patience, lr halvings) at other epochs than the furthest, taken for killed runs."""
    from nowt.report import seed_summary_table

    runs = []
    for seed, accs, patience in [(0, [90.0, 92.0, 91.0, 91.0], 2), (1, [91.0, 90.0, 90.0], 2),
                                 (2, [88.0, 89.0, 90.0, 95.0, 94.0, 93.0], 2), (3, [85.0], 2)]:
        name = f"row/seed{seed}"
        write_run(tmp_path / name, "fa", accs)
        (tmp_path / name / "config.json").write_text(json.dumps({"rule": "fa", "seed": seed, "epochs": 20,
                                                                 "patience": patience}))
        runs.append(load_run(tmp_path / name, name))
    table = seed_summary_table(runs)
    # seeds 0-2 ended by patience (best 2 epochs old); seed 3 was stopped after 1 epoch of 20: not a result
    assert "| row | 3 of 4 (seed 3 stopped at epoch 1 of 20) | 92.67 ± 2.08 |" in table
    (tmp_path / "row/seed3/diverged.json").write_text('{"epoch": 2, "message": "the run diverged: ..."}')
    runs[3] = load_run(tmp_path / "row/seed3", "row/seed3")
    assert "| row | 3 of 4 (seed 3 diverged in epoch 2) |" in seed_summary_table(runs)


def test_a_mean_over_seeds_that_all_stopped_early_says_they_are_unfinished(tmp_path):
    """Three seeds of a 10-epoch run, all killed at epoch 2, made a clean "3" whose "final" accuracy was
    epoch 2's."""
    from nowt.report import seed_summary_table

    for seed in range(3):
        _seed_run(tmp_path / f"s{seed}", seed, [40.0 + seed, 50.0 + seed], epochs=10)
    table = seed_summary_table([load_run(tmp_path / f"s{s}") for s in range(3)])
    assert "| fa | 3 of 3 (unfinished: epoch 2 of 10) | 51.00 ± 1.00 |" in table
    for seed in range(3):  # ended: a plain count
        _seed_run(tmp_path / f"e{seed}", seed, [40.0 + seed, 50.0 + seed], epochs=2)
    assert "| fa | 3 | 51.00 ± 1.00 |" in seed_summary_table([load_run(tmp_path / f"e{s}") for s in range(3)])


def test_the_run_table_marks_a_diverged_run_and_an_unfinished_one(tmp_path):
    """The per-run table (the only one when every recipe has one run) showed a run that diverged in epoch 2
    of 4, and one killed after epoch 2 of 4, as plainly as a finished run: their last epoch, no mark."""
    from nowt.report import summary_table

    _seed_run(tmp_path / "done", 0, [40.0, 50.0, 60.0, 70.0], epochs=4)
    _seed_run(tmp_path / "killed", 0, [40.0, 50.0], epochs=4)
    _seed_run(tmp_path / "div", 0, [40.0], epochs=4)
    (tmp_path / "div" / "diverged.json").write_text('{"epoch": 2, "message": "the run diverged: ..."}')
    table = summary_table([load_run(tmp_path / n) for n in ("done", "killed", "div")])
    assert "| done | fa | 4 | 70.00 |" in table
    assert "| killed | fa | 2 of 4 (unfinished) | 50.00 |" in table
    assert "| div | fa | 1 (diverged in epoch 2) | 40.00 |" in table


def test_the_run_table_says_when_a_runs_test_scores_are_held_out_training_examples(tmp_path):
    """An --lr-grid run's test_* are scores on held-out training examples; its row read as test accuracy."""
    from nowt.report import summary_table
    from nowt.train.select import VALIDATION_SCORES

    _seed_run(tmp_path / "lr0.1", 0, [60.0, 70.0])
    config = json.loads((tmp_path / "lr0.1" / "config.json").read_text())
    config["extra"] = {"test set": "51 held out of the training set" + VALIDATION_SCORES}
    (tmp_path / "lr0.1" / "config.json").write_text(json.dumps(config))
    _seed_run(tmp_path / "plain", 0, [60.0, 70.0])
    table = summary_table([load_run(tmp_path / n) for n in ("lr0.1", "plain")])
    assert "| lr0.1 (test acc: held-out training examples) | fa | 2 | 70.00 |" in table
    assert "| plain | fa | 2 | 70.00 |" in table


def test_seeds_trained_on_other_data_are_not_averaged_together(tmp_path):
    """--data-dir is no part of a run's identity (the same data lies elsewhere on another machine), so a seed
    trained on other data (half its labels randomised) was averaged in with the others as one recipe."""
    from nowt.report import seed_summary_table

    def fingerprint(path, train_labels):
        record = {"epoch": 0, "data": {"train": 512, "test": 100, "inputs": 1.5, "labels": 450.0,
                                       "train_labels": train_labels}}
        (path / "provenance.jsonl").write_text(json.dumps(record) + "\n")

    for name, seed, accs, labels in [("a0", 0, [50.0, 60.0], 286027.0), ("a1", 1, [52.0, 62.0], 286027.0),
                                     ("b0", 0, [20.0, 30.0], 283759.0), ("b1", 1, [22.0, 32.0], 283759.0),
                                     ("old", 2, [54.0, 64.0], None)]:
        _seed_run(tmp_path / name, seed, accs)
        if labels is not None:  # a run from before fingerprints were recorded goes with either
            fingerprint(tmp_path / name, labels)
    table = seed_summary_table([load_run(tmp_path / n) for n in ("a0", "a1", "b0", "b1", "old")])
    assert "| fa (the data of a0) | 3 | 62.00 ± 2.00 |" in table
    assert "| fa (the data of b0) | 2 | 31.00 ± 1.41 |" in table
