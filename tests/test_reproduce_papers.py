"""The paper-specific reproductions: Cheon et al. 2024 (and its conditions), Akrout et al. 2019's official
recipe and logs, nowt's ViT rule comparison, Song et al. 2021. The registry's mechanism: test_reproduce.py."""

import math

import pytest

from nowt import reproduce
from nowt.reproduce import (
    REPRODUCTIONS,
    run_config,
)


def test_cheon2024_registers_the_papers_protocol_and_rebuilds_its_report_from_saved_runs(
        tmp_path, monkeypatch):
    from nowt.reproduce import cheon2024
    from nowt.reproduce.cheon2024_noise import POOL_VARIANT, REGISTERED
    from nowt.train import RuleLearner

    r = REGISTERED  # the paper's protocol: fresh noise every batch; the lab's code where the paper is silent
    assert r.pool is None and (r.noise, r.mean, r.std) == ("gaussian", 0.0, 1.0)
    assert (r.hidden, r.loss) == ((100,), "ce")
    assert (r.optimizer, r.lr, r.momentum, r.weight_decay) == ("sgd", 0.01, 0.9, 0.01)
    assert (r.batch_size, r.steps, r.init, r.batch_norm) == (256, 5 * (50000 // 256), "he", False)
    assert POOL_VARIANT == r.changed(pool=6400)
    settings = cheon2024.Cheon2024Config().settings
    assert settings["gap"]["train_size"] == 1600 and settings["gap"]["hidden"] == (100, 100)
    steps, original = [], RuleLearner.train_step
    monkeypatch.setattr(RuleLearner, "train_step",
                        lambda self, x, y: steps.append(len(y)) or original(self, x, y))
    cfg = cheon2024.Cheon2024Config(noise=r.changed(steps=5), settings={
        "table1": {"hidden": (100,), "train_size": 200, "epochs": 1, "eval_every": 1,
                   "conditions": cheon2024.REGISTERED_CONDITIONS},
        "gap": {"hidden": (100, 100), "train_size": 100, "epochs": 2, "eval_every": 1,
                "conditions": cheon2024.CONDITIONS}})
    def run(**k):
        return cheon2024.reproduce_cheon2024(tmp_path, datasets=("mnist",), seeds=(0, 1), config=cfg,
                                             progress=False, command="test", **k)

    summary = run()
    # every noise step through nowt.train's step: 2 networks, fresh and pool, 2 seeds
    assert steps.count(256) == 2 * 2 * 2 * 5
    assert set(summary["runs"]["gap"]["mnist"]) == {"bp", "fa", "fa+noise", "fa+pool"}
    assert set(summary["runs"]["table1"]["mnist"]) == {"bp", "fa", "fa+noise"}
    assert (tmp_path / "runs" / "gap-mnist" / "fa+pool" / "seed1.json").is_file()
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Command: `test`" in text and "## Registered: the noise phase (the paper's protocol" in text
    assert "## Exploration: nowt's pool variant (not the paper's protocol)" in text
    for png in ("noise_pretraining.png", "learning_gap_mnist.png", "learning_table1_mnist.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
    steps.clear()
    assert run(gather=True)["runs"] == summary["runs"] and not steps  # from the saved files, training nothing
    assert (tmp_path / "RESULTS.md").read_text() == text
    run()  # a rerun reads its saved runs
    assert not steps


def test_cheon_noise_phase_takes_pretrain_noises_steps_on_a_he_network():
    """The reproduction's noise phase (nowt.train's step) and nowt.pretrain_noise give the same weights."""
    import torch

    from nowt.layers import feedback_layers
    from nowt.noise import pretrain_noise
    from nowt.reproduce.cheon2024_noise import REGISTERED, network, noise_model, noise_phase

    recipe = REGISTERED.changed(steps=12, pool=512)
    model, record = noise_phase(recipe, 3, log_every=4)
    other = noise_model(recipe, 3)
    pretrain_noise(other, (1, 28, 28), steps=12, pool=512, batch_size=256, lr=0.01, momentum=0.9,
                   weight_decay=0.01, seed=3, progress=False)
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert [h["step"] for h in record["history"]] == [0, 4, 8, 12]
    assert set(record["history"][0]["neuron"]) == {"3"}
    fa, bp = feedback_layers(network((100,), "fa", 0)), feedback_layers(network((100,), "bp", 0))
    assert torch.equal(fa["1"].weight, bp["1"].weight) and not fa["1"].bias.any()
    for w in (fa["1"].weight, fa["3"].feedback):
        assert abs(float(w.detach().std()) - math.sqrt(2 / w.shape[1])) < 0.1 * math.sqrt(2 / w.shape[1])
    assert not torch.equal(fa["3"].weight, fa["3"].feedback)


def test_akrout_runs_follow_the_official_recipe_and_compare_with_the_authors_logs(tmp_path, monkeypatch):
    import json

    from nowt.reproduce import akrout2019, get, run_config

    repro = get("akrout2019")
    cfg = run_config(repro, "wm", quick=True, out_dir=tmp_path)
    assert (cfg.standardize, cfg.shuffle, cfg.drop_last, cfg.bias_lr_scale) == (False, False, True, 1 / 128)
    assert (cfg.mirror_every, cfg.mirror_batch, cfg.mirror_lr, cfg.mirror_decay) == (1, 128, 0.01, 0.0)
    assert cfg.mirror_activation == "sigmoid" and not cfg.mirror_normalize and cfg.mirror_noise == "uniform"
    # the authors' log layout: epoch keys, test accuracy, weight angles of layer_0 (hidden) and layer_1
    logs = tmp_path / "authors" / "experiments" / "mnist" / "fa-V0"
    logs.mkdir(parents=True)
    theirs = {f"epoch_{i}": {"test_accuracy": 80.0 + i, "weight_angles": {"layer_0": 90.0, "layer_1": 40.0}}
              for i in range(6)}
    (logs / "results.json").write_text(json.dumps(theirs))
    (tmp_path / "fa" / "seed0").mkdir(parents=True)  # the authors' one run beside our seed 0
    ours = [{"epoch": i + 1, "test_accuracy": 80.5 + i, "weight_angles": {"1": 89.0, "3": 43.0}}
            for i in range(6)]
    (tmp_path / "fa" / "seed0" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ours))
    monkeypatch.setenv(akrout2019.LOGS_ENV, str(tmp_path / "authors"))
    parts = repro.compare(tmp_path)
    row = next(line for line in "\n".join(parts).splitlines() if line.startswith("| fa |"))
    assert row.split(" | ")[1:4] == ["6", "0.50", "85.50"] and row.endswith("| 3.00 |")
    assert (tmp_path / "official_curves.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.delenv(akrout2019.LOGS_ENV)
    assert akrout2019.LOGS_ENV in repro.compare(tmp_path)[0]  # nothing written before: says how to compare
    # a gather without the logs dropped the committed comparison for that hint; it is kept, and said so
    (tmp_path / "RESULTS.md").write_text("# akrout2019\n\n" + "\n\n".join(parts) + "\n\n## Later\n\nx\n")
    for _ in range(2):
        with pytest.warns(UserWarning, match="kept from .*RESULTS.md as it was, not recomputed"):
            kept = repro.compare(tmp_path)
        (tmp_path / "RESULTS.md").write_text("\n\n".join(kept) + "\n")
        assert kept == ["\n\n".join(parts) + "\n\n" + akrout2019.KEPT_NOTE] and row in kept[0]


def test_cheon_conditions_change_one_thing_each_and_gather_rebuilds_the_table(tmp_path, monkeypatch):
    from nowt.reproduce import cheon2024_conditions as study
    from nowt.reproduce.cheon2024_noise import REGISTERED

    assert study.CONDITIONS["registered"][1] == {}
    for label, (_, change) in study.CONDITIONS.items():
        recipe = REGISTERED.changed(**change)
        assert recipe != REGISTERED or label == "registered", label
    monkeypatch.setattr(study, "QUICK", ("registered", "hidden-frozen"))
    summary = study.reproduce_conditions(tmp_path, quick=True, command="test", progress=False)
    assert set(summary) == {"registered", "hidden-frozen"} and len(summary["registered"]["end"]) == 3
    assert summary["hidden-frozen"]["start"] == summary["registered"]["start"]  # one seed, one network
    assert (tmp_path / "runs" / "hidden-frozen" / "seed2.json").is_file()
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| registered | the paper's protocol | 3 |" in text and "Command: `test`" in text
    monkeypatch.setattr(study, "noise_phase", lambda *a, **k: pytest.fail("gather must train nothing"))
    reproduce.run("cheon2024-conditions", tmp_path, quick=True, gather=True, command="test", progress=False)
    assert (tmp_path / "RESULTS.md").read_text() == text
    reproduce.run("cheon2024-conditions", tmp_path / "empty", quick=True, gather=True, progress=False)
    assert "Missing (not run yet): registered seed 0" in (tmp_path / "empty" / "RESULTS.md").read_text()


def test_vit_rules_runs_every_rule_and_seed_at_one_budget(tmp_path):
    from dataclasses import asdict

    repro = REPRODUCTIONS["vit-rules"]
    assert len(repro.runs) == 2 * 8 and repro.seeds == (0, 1, 2) and not repro.run_figures
    budget = None
    for label in repro.runs:
        cfg = asdict(run_config(repro, label, False, tmp_path))
        variant = cfg["rule"] + ("-blocks" if cfg["blocks"] else "") + (
            "-shared" if cfg["position_feedback"] == "shared" else "")
        assert label == f"{cfg['dataset']}-{variant}" and cfg["model"] == "vit"
        assert cfg["blocks"] == (("blocks.*",) if "blocks" in label else ())
        rest = {k: v for k, v in cfg.items()
                if k not in ("dataset", "rule", "seed", "out_dir", "blocks", "position_feedback")}
        assert budget in (None, rest), label  # the same optimizer, schedule and epochs for every run
        budget = rest
    variants = [*((r, (), "full") for r in ("bp", "fa", "usf", "kp", "wm", "dfa")),
                ("dfa", ("blocks.*",), "full"), ("dfa", ("blocks.*",), "shared")]
    configs = [run_config(repro, n, False, tmp_path, s) for n in repro.runs for s in repro.seeds]
    assert {(c.rule, c.blocks, c.position_feedback, c.seed) for c in configs} == {
        (*v, s) for v in variants for s in (0, 1, 2)}
    quick = run_config(repro, "mnist-wm", True, tmp_path)
    assert (quick.epochs, quick.train_size) == (1, 2000)


def test_vit_rules_summary_averages_seeds_and_layers(tmp_path):
    import json

    from nowt.reproduce.vit_rules import summarize

    def write(label, accuracies, angles, epochs=None):
        (tmp_path / label).mkdir(parents=True)
        records = [{"epoch": i + 1, "test_accuracy": a, "weight_angles": angles[i]}
                   for i, a in enumerate(accuracies)]
        (tmp_path / label / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (tmp_path / label / "config.json").write_text(json.dumps({"epochs": epochs or len(records)}))

    write("mnist-fa/seed0", [80.0, 90.0], [{"embed": 90.0, "head": 50.0}, {"embed": 80.0, "head": 40.0}])
    write("mnist-fa/seed1", [85.0, 94.0], [{"embed": 88.0, "head": 46.0}, {"embed": 70.0, "head": 30.0}])
    write("mnist-fa/seed2", [10.0], [{"embed": 90.0, "head": 90.0}], epochs=2)  # still running: not a seed's
    write("mnist-dfa/seed0", [70.0], [{"embed": math.nan, "head": math.nan}])
    text = "\n".join(summarize(tmp_path))
    # 90 and 94: mean 92, sample sd 2 sqrt(2); the last epoch's angles averaged per layer
    assert "| fa | 92.00 ± 2.83 | – | 2 | 0 |" in text and "| dfa | 70.00 | – | 1 | 0 |" in text
    assert "| fa | 75.0 | 35.0 |" in text and "| dfa | – | – |" in text and "| bp | – | – | 0 | 0 |" in text
    assert (tmp_path / "vit_rules.png").read_bytes()[:4] == b"\x89PNG"


def test_gpt_rules_summary_averages_seeds_and_draws_the_grid(tmp_path):
    import json

    from nowt.reproduce.gpt_rules import summarize

    def write(label, bpcs, angles, epochs=None):
        (tmp_path / label).mkdir(parents=True)
        records = [{"epoch": i + 1, "test_accuracy": 20.0, "test_bpc": b, "update_angles": angles}
                   for i, b in enumerate(bpcs)]
        (tmp_path / label / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (tmp_path / label / "config.json").write_text(json.dumps({"epochs": epochs or len(records)}))

    write("fa/seed0", [4.5, 4.0], {"blocks.0.linear1": 80.0, "head": 0.0})
    write("fa/seed1", [4.4, 4.2], {"blocks.0.linear1": 70.0, "head": 0.0})
    write("fa/seed2", [6.0], {"blocks.0.linear1": 90.0, "head": 0.0}, epochs=2)  # unfinished: left out
    write("fa/lr-grid/lr0.001", [4.6, 4.3], {"blocks.0.linear1": 80.0, "head": 0.0})
    write("dfa/seed0", [5.0], {"blocks.0.linear1": 95.0, "head": 0.0})
    text = "\n".join(summarize(tmp_path))
    # 4.0 and 4.2: mean 4.1, sample sd 0.14; the last epoch's angles averaged per layer; rows never run absent
    assert "| fa | 4.10 ± 0.14 | 75.0 | 0.0 |" in text and "| dfa | 5.00 | 95.0 | 0.0 |" in text
    assert "| bp |" not in text and "gpt_rules.png" in text
    assert (tmp_path / "gpt_rules.png").read_bytes()[:4] == b"\x89PNG"


def test_vit_rules_panels_show_update_angles_where_b_vs_w_is_undefined():
    from nowt.reproduce.vit_rules import _angle_key

    dfa = [[{"weight_angles": {"head": math.nan}, "update_angles": {"head": 80.0}}]]
    fa = [[{"weight_angles": {"head": 40.0}, "update_angles": {"head": 30.0}}]]
    assert _angle_key(dfa) == "update_angles" and _angle_key(fa) == "weight_angles" and _angle_key([]) == (
        "weight_angles")


def test_vit_rules_quick_run_trains_and_records_attention_alignment(tmp_path):
    path = reproduce.run("vit-rules", tmp_path, quick=True, only=["mnist-usf"], progress=False)
    text = path.read_text()
    assert "| mnist-usf | final_test_accuracy | – |" in text and "| usf |" in text
    assert "vit_rules.png" in text
    assert not (tmp_path / "alignment.png").exists()  # one figure for the whole table, not one per run
    from nowt.report import load_run

    (record,) = load_run(tmp_path / "mnist-usf" / "seed0").history
    angles = record["weight_angles"]
    assert {"blocks.0.self_attn.in_proj", "blocks.1.self_attn.out_proj", "embed", "head"} <= set(angles)
    assert all(20 < a < 45 for a in angles.values()) and record["test_accuracy"] > 15  # B = sign(W) mean|W|


def test_song2021_writes_its_raw_runs_and_gather_rebuilds_results_from_them_alone(tmp_path, monkeypatch):
    """Every simulation is a line of runs.jsonl; --gather recomputes RESULTS.md byte for byte from it and
    meta.json, simulating nothing; the numbers come from the file (an edited record changes them)."""
    import json

    from nowt.reproduce import song2021

    monkeypatch.setattr(song2021, "QUICK", dict(conv_steps=150, conv_seeds=2, lam_steps=100, lam_seeds=3,
                                                widths=(20, 80), width_steps=100, width_seeds=2))
    out = tmp_path / "song"
    reproduce.run("song2021", out, quick=True, progress=False)
    records = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    groups = [r["group"] for r in records]
    assert (groups.count("convergence"), groups.count("lam"), groups.count("width")) == (16, 24, 8)
    lam01 = [r for r in records if r["group"] == "lam" and r["lam"] == 0.1 and r["feedback"] == "random"]
    assert [r["seed"] for r in lam01] == [0, 1, 2] and lam01[0]["step"] == [0, 50, 100]
    assert len(lam01[0]["loss"]) == len(lam01[0]["alignment"]) == 3 and lam01[0]["p"] == 200
    text = (out / "RESULTS.md").read_text()
    mean = sum(r["alignment"][-1] for r in lam01) / 3
    assert f"| 0.1 | random | {mean:.3f} |" in text and "## Comparison with the paper" in text
    assert text.count("**borne out**") + text.count("**not borne out**") == 4

    def no_simulation(*args, **kwargs):
        raise AssertionError("gather simulated")

    monkeypatch.setattr(song2021, "simulate", no_simulation)
    monkeypatch.setattr(song2021, "simulate_all", no_simulation)
    (out / "RESULTS.md").unlink()
    from nowt.cli import main
    assert main(["reproduce", "song2021", "--gather", "--out", str(out), "--no-progress"]) == 0
    assert (out / "RESULTS.md").read_text() == text
    lam01[0]["alignment"][-1] = -1.0  # the table is the file's: an edited record moves its mean
    (out / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reproduce.run("song2021", out, gather=True, progress=False)
    edited = sum(r["alignment"][-1] for r in lam01) / 3
    assert f"| 0.1 | random | {edited:.3f} |" in (out / "RESULTS.md").read_text() and edited < mean - 0.1
    with pytest.raises(FileNotFoundError, match="without --gather"):
        reproduce.run("song2021", tmp_path / "empty", gather=True, progress=False)


def test_cheon2024_data_phase_stops_on_a_diverged_run(monkeypatch):
    """Its own loop never read the loss: a NaN run went on and its curve was tabulated."""
    import torch

    from nowt.reproduce import cheon2024
    from nowt.train import RuleLearner

    original = RuleLearner.train_step
    monkeypatch.setattr(RuleLearner, "train_step",
                        lambda self, x, y: {**original(self, x, y), "loss": torch.tensor(float("nan"))})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    data = (torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,)))
    with pytest.raises(FloatingPointError, match="cheon2024: the bp run \\(seed 0\\) diverged.*epoch 1"):
        cheon2024._train(model, cheon2024.Cheon2024Config(), "bp", 0, {"epochs": 1, "eval_every": 100},
                         data, data)
