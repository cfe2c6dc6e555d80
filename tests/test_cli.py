"""The command line end to end on tiny budgets: train from TOML, compare, reproduce, report."""

import json

import pytest
import torch

import nowt.reproduce as reproduce_mod
from nowt.cli import main
from nowt.reproduce import Reproduction


def test_train_from_toml_with_flag_override(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('dataset = "synthetic"\nhidden = [16]\nepochs = 1\nlr = 0.01\nbatch-size = 50\n'
                      'optimizer = "adam"\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--lr", "0.02", "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
    saved = json.loads((out / "config.json").read_text())
    assert (saved["hidden"], saved["lr"], saved["batch_size"], saved["optimizer"]) == ([16], 0.02, 50, "adam")
    capsys.readouterr()
    config.write_text("epochz = 3\n")
    assert main(["train", "--config", str(config)]) == 2
    assert "unknown key(s) ['epochz']" in capsys.readouterr().err
    assert main(["train", "--resume", "--dataset", "synthetic"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err


def test_compare_prints_a_table_and_writes_plots(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,fa", "--dataset", "synthetic", "--hidden", "16", "--epochs", "2",
                 "--batch-size", "50", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| bp | bp | 2 |" in printed and "| fa | fa | 2 |" in printed and "report.md" in printed
    assert {p.name for p in out.iterdir()} >= {"bp", "fa", "report.md", "curves.png", "alignment.png"}
    # The same data and model for both rules: bp and fa start from the same forward weights.
    bp, fa = (json.loads((out / r / "config.json").read_text()) for r in ("bp", "fa"))
    assert {k: v for k, v in bp.items() if k not in ("rule", "out_dir")} == \
           {k: v for k, v in fa.items() if k not in ("rule", "out_dir")}
    capsys.readouterr()
    assert main(["compare", "--rules", "bp,zz", "--dataset", "synthetic", "--out", str(out)]) == 2
    assert "nowt compare: error: unknown rule 'zz'" in capsys.readouterr().err


def test_compare_over_seeds_reports_mean_and_spread_per_rule(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--rules", "bp,fa", "--seeds", "0,1", "--dataset", "synthetic", "--hidden", "16",
                 "--epochs", "1", "--batch-size", "50", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    runs = {f"{r}/seed{s}": json.loads((out / r / f"seed{s}" / "metrics.jsonl").read_text().splitlines()[-1])
            for r in ("bp", "fa") for s in (0, 1)}
    seeds = {json.loads((out / "fa" / f"seed{s}" / "config.json").read_text())["seed"] for s in (0, 1)}
    assert seeds == {0, 1}
    for rule in ("bp", "fa"):
        accs = [runs[f"{rule}/seed{s}"]["test_accuracy"] for s in (0, 1)]
        mean, std = sum(accs) / 2, abs(accs[0] - accs[1]) / 2 ** 0.5  # the sample std of two values
        assert f"| {rule} | 2 | {mean:.2f} ± {std:.2f} |" in printed
        assert f"| {rule} | 2 | {mean:.2f} ± {std:.2f} |" in (out / "report.md").read_text()
    assert main(["compare", "--rules", "bp", "--seeds", "0,0", "--dataset", "synthetic", "--out",
                 str(out)]) == 2
    assert "--seeds 0,0: give distinct seeds" in capsys.readouterr().err
    _one_line_error(capsys, ["compare", "--rules", "bp", "--seeds", "0,x", "--dataset", "synthetic"],
                    "--seeds: takes comma-separated integers")


def test_compare_runs_each_rule_once_and_refuses_an_unknown_one_before_training(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--rules", " fa,FA ,fa", "--seeds", "0,1", "--dataset", "synthetic", "--hidden", "8",
            "--epochs", "1", "--batch-size", "100", "--out", str(out), "--no-progress"]
    for again in ([], ["--resume"]):
        assert main(args + again) == 0
        printed = capsys.readouterr().out
        assert "| fa | 2 | " in printed and "| fa | 4 |" not in printed
        assert printed.count("| fa/seed0 |") == 1
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["fa"]
    assert "nowt compare on synthetic: fa\n" in (out / "report.md").read_text()
    unknown = tmp_path / "unknown"
    assert main(["compare", "--rules", "kp,nope", "--dataset", "synthetic", "--out", str(unknown)]) == 2
    assert "unknown rule 'nope'" in capsys.readouterr().err and not unknown.exists()


def test_resume_says_when_there_is_nothing_to_resume(tmp_path, capsys):
    """--resume on a folder without a checkpoint (a mistyped --out) started a fresh run without a word."""
    args = ["train", "--dataset", "synthetic", "--hidden", "8", "--epochs", "1", "--no-progress", "--resume",
            "--out", str(tmp_path / "typo")]
    assert main(args) == 0
    assert f"nothing to resume in {tmp_path / 'typo'}: no checkpoint.pt there" in capsys.readouterr().err
    assert main(args) == 0  # the same command again finds the run, ended: nothing said
    assert "nothing to resume" not in capsys.readouterr().err
    assert len((tmp_path / "typo" / "metrics.jsonl").read_text().splitlines()) == 1


def test_a_run_logging_to_a_file_writes_epoch_lines_and_no_bar_frames(tmp_path, capsys, monkeypatch):
    import sys

    assert main(["train", "--dataset", "synthetic", "--hidden", "16", "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    assert "epoch 1: train loss" in out and "epoch 2: train loss" in out
    assert "it/s" not in err and "epoch 1/2" not in err  # stderr is no terminal here: no bar drawn
    from nowt.progress import progress_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert not progress_bar(range(3), "x", True).disable  # on a terminal the bar is drawn
    assert progress_bar(range(3), "x", False).disable


def test_reproduce_list_and_a_tiny_reproduction(tmp_path, capsys, monkeypatch):
    assert main(["reproduce", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "akrout2019" in listing and "Table 1" in listing and "best_test_error 1.45" in listing
    tiny = Reproduction(name="tiny", paper="Tiny 2026", table="Table 0",
                        config=dict(dataset="synthetic", hidden=(8,), epochs=3, batch_size=50),
                        runs={"bp": {"rule": "bp"}}, published={"bp": {"best_test_accuracy": 99.0}},
                        quick=dict(epochs=1))
    monkeypatch.setitem(reproduce_mod.REPRODUCTIONS, "tiny", tiny)
    out = tmp_path / "rep"
    assert main(["reproduce", "tiny", "--quick", "--out", str(out), "--no-progress"]) == 0
    results = (out / "RESULTS.md").read_text()
    assert "`nowt reproduce tiny --quick" in results and "| bp | best_test_accuracy | 99.00 |" in results
    assert (out / "curves.png").is_file()
    assert main(["reproduce", "nope"]) == 2


def test_report_command(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--rule", "kp", "--hidden", "8", "--epochs", "2",
                 "--batch-size", "100", "--out", str(run), "--no-progress"]) == 0
    assert main(["report", str(run)]) == 0
    assert "report.md" in capsys.readouterr().out
    assert (run / "report" / "alignment.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["report", str(tmp_path / "missing")]) == 2


def _one_line_error(capsys, argv: list[str], *expected: str) -> None:
    """`nowt ...` exits non-zero with a single `nowt CMD: error: ...` line naming the problem."""
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals (a flag that is not a number)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"nowt {argv[0]}: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err


@pytest.mark.parametrize("toml, expected", [
    ("hidden = [0]", "hidden (--hidden) must be >= 1, got (0,)"),
    ("epochs = 1.5", "epochs (--epochs) expects an integer >= 1, got 1.5"),
    ('epochs = "3"', "epochs (--epochs) expects an integer >= 1, got '3' (str)"),
    ('deterministic = "false"', "deterministic (--deterministic) expects true or false"),
    ("lr = true", "lr (--lr) expects a number > 0.0, got True (bool)"),
    ('model = "resnet9"', "unknown model 'resnet9' (--model); choose from: mlp"),
    ('dataset = "svhn"', "unknown dataset 'svhn' (--dataset); choose from: mnist"),
    ("epochs = ", "cannot read config"),
])
def test_bad_toml_values_are_one_line_errors(tmp_path, capsys, toml, expected):
    config = tmp_path / "bad.toml"
    config.write_text(toml + "\n")
    _one_line_error(capsys, ["train", "--config", str(config), "--no-progress"], expected)


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    for argv, expected in [
        (["--train-size", "-100"], "train_size (--train-size) must be >= 1, got -100"),
        (["--train-size", "0"], "must be >= 1, got 0"),
        (["--epochs", "1.5"], "--epochs: invalid int value: '1.5'"),
        (["--rule", "zz"], "unknown rule 'zz' (--rule); choose from: bp, fa"),
        (["--out", ""], "out_dir (--out) is empty"),
        (["--out", str(afile)], "is an existing file"),
        (["--device", "foo"], "unknown device 'foo'"),
        (["--rule", "fa", "--schedule", "alternating"], "--schedule applies only to: tp, dtp, sdtp, ao-sdtp"),
        (["--rule", "bp", "--mirror-steps", "4"], "--mirror-steps applies only to: wm"),
        # given as flags, model options the model lacks are refused even at their default values
        (["--model", "lenet", "--hidden", "1000"], "'lenet' has no hidden option; --hidden applies to: mlp"),
        (["--model", "mnist_fc", "--activation", "relu"],
         "'mnist_fc' has no activation option (its activation is tanh); --activation applies to: mlp"),
        (["--model", "convnet", "--dropout", "0"], "model 'convnet' has no dropout option"),
        (["--model", "mlp", "--pool", "mean"], "model 'mlp' has no pool option; --pool applies to: vit"),
        (["--rule", "fa", "--storage", "seeded"], "--storage applies only to: dfa, ifa"),
        (["--rule", "kp", "--error-at", "head"], "--error-at applies only to: dfa, ifa"),
        (["--rule", "dfa", "--storage", "disk"], "--storage"),
        # flags at their default values are requests too: target propagation decides these itself
        (["--rule", "dtp", "--lr-schedule", "cosine"], "'dtp' (target propagation) does not support "
                                                       "--lr-schedule cosine"),
        (["--rule", "sdtp", "--momentum", "0.9"], "does not support --momentum 0.9"),
        (["--rule", "fa", "--storage", "dense"], "--storage applies only to: dfa, ifa (not 'fa')"),
    ]:
        _one_line_error(capsys, ["train", "--dataset", "synthetic", "--epochs", "1", *argv], *expected)
    if not torch.cuda.is_available():
        _one_line_error(capsys, ["train", "--device", "cuda"], "'cuda' (--device) is not available")
    _one_line_error(capsys, ["compare", "--out", ""], "out_dir (--out) is empty")
    _one_line_error(capsys, ["reproduce", "tiny", "--device", "foo"], "unknown device 'foo'")


def test_flags_given_at_their_default_are_held_to_the_pairwise_checks(capsys):
    """A flag given is a request even at its default value: --momentum 0.9 with adam, --adam-betas with sgd,
    --mirror-anneal 2 beside --mirror-lr and --mirror-noise-std where it cancels were accepted and ignored."""
    from nowt.cli import build_parser, config_from_args

    for argv, *expected in [
        (["--optimizer", "adam", "--momentum", "0.9"], "--momentum applies to sgd and rmsprop, not --optim"),
        (["--optimizer", "adamw", "--momentum", "0.9"], "--momentum applies to sgd and rmsprop"),
        (["--adam-betas", "0.9,0.999"], "--adam-betas applies to Adam and AdamW only, not --optimizer sgd"),
        (["--optimizer", "rmsprop", "--adam-eps", "1e-8"], "--adam-eps applies to Adam and AdamW only"),
        (["--rule", "wm", "--mirror-lr", "0.01", "--mirror-anneal", "2"],
         "--mirror-anneal has no effect: it shapes the automatic mirror step, and with mirror_lr (0.01)"),
        (["--rule", "wm", "--mirror-noise-std", "1"], "--mirror-noise-std has no effect: ", "s cancels"),
    ]:
        _one_line_error(capsys, ["train", "--dataset", "synthetic", "--epochs", "1", *argv], *expected)
    parser = build_parser()
    for argv in (["--optimizer", "adam", "--adam-betas", "0.9,0.999"], ["--momentum", "0.9"],
                 ["--rule", "wm", "--mirror-anneal", "2"],
                 ["--rule", "wm", "--mirror-noise-std", "1", "--mirror-activation", "sigmoid"]):
        config_from_args(parser.parse_args(["train", *argv]))  # where they apply, accepted


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    with pytest.raises(ValueError, match="must be >= 1"):
        main(["train", "--train-size", "0", "--debug"])
    monkeypatch.setenv("NOWT_DEBUG", "1")
    with pytest.raises(ValueError, match="unknown rule"):
        main(["train", "--rule", "zz"])


def test_flags_are_generated_from_the_config_fields(tmp_path):
    from dataclasses import fields

    from nowt.cli import _shown, build_parser, config_from_args
    from nowt.train import TrainConfig

    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions if a.option_strings}
    for f in fields(TrainConfig):
        if f.name == "extra":
            continue
        assert f.name in flags, f.name
        # None: unset, so that a flag given at its default value is seen; the default is TrainConfig's alone
        assert flags[f.name].default is None and f"(default: {_shown(f.default)})" in flags[f.name].help
    assert all(a.help for a in train._actions), [a.dest for a in train._actions if not a.help]
    assert flags["num_workers"].option_strings == ["--workers"]
    assert flags["out_dir"].option_strings == ["--out"]
    args = parser.parse_args(["train", "--hidden", "500,500", "--workers", "2", "--out", str(tmp_path / "r"),
                              "--deterministic", "--no-augment", "--rule", "KP"])
    cfg = config_from_args(args)
    assert (cfg.hidden, cfg.num_workers, cfg.deterministic, cfg.augment, cfg.rule) == \
        ((500, 500), 2, True, False, "kp")
    assert cfg == TrainConfig(hidden=(500, 500), num_workers=2, out_dir=str(tmp_path / "r"),
                              deterministic=True, rule="kp")
    assert config_from_args(parser.parse_args(["train", "--model", "mnist_fc", "--activation", "tanh"])) == \
        TrainConfig(model="mnist_fc", activation="tanh")  # the activation it is built with
    assert "bp, fa" in flags["rule"].help and "mnist_lc" in flags["model"].help
    assert "rule option of: wm" in flags["mirror_steps"].help


def test_a_whole_config_in_toml_may_hold_model_options_at_their_defaults(tmp_path):
    """A TOML file may be a run's whole config: `hidden = [1000]` on a model without widths is the default
    and passes, as in build_model; a value other than the default, or the same as a flag, is refused."""
    from nowt.cli import _unwrap, build_parser, config_from_args, read_toml

    config = tmp_path / "run.toml"
    config.write_text('model = "mnist_fc"\nhidden = [1000]\nactivation = "tanh"\ndropout = 0.0\n')

    def parse(*flags: str):
        argv = ["train", "--config", str(config), *flags]
        return config_from_args(_unwrap(build_parser(read_toml(str(config))).parse_args(argv)))

    assert parse().model == "mnist_fc"
    with pytest.raises(ValueError, match="'mnist_fc' has no hidden option"):
        parse("--hidden", "1000")
    config.write_text('model = "mnist_fc"\nhidden = [500]\n')
    with pytest.raises(ValueError, match="'mnist_fc' has no hidden option"):
        parse()
    # target propagation's saved config holds every field, at defaults it does not use: accepted from TOML
    config.write_text('rule = "sdtp"\nmodel = "mnist_fc"\noptimizer = "sgd"\nmomentum = 0.9\n'
                      'lr_schedule = "cosine"\nstorage = "dense"\n')
    assert parse().rule == "sdtp"
    with pytest.raises(ValueError, match="does not support --lr-schedule cosine"):
        parse("--lr-schedule", "cosine")  # the same value as a flag is a request


def test_evaluate_scores_a_saved_run_on_its_train_and_test_sets(tmp_path, capsys):
    """`nowt evaluate RUN` rebuilds the run's model from its checkpoint: its test accuracy is the one the run
    logged after its last epoch, its train accuracy the argmax of the model on every training example."""
    from nowt.train import TrainConfig, build_model
    from nowt.train.factories import load_data

    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--rule", "fa", "--hidden", "16", "--epochs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(out), "--no-progress"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:]]
    scores = {row[2].strip(): float(row[4]) for row in rows}
    assert [row[1].strip() for row in rows] == ["2", "2"]
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert scores["test"] == pytest.approx(logged["test_accuracy"], abs=0.005)
    cfg = TrainConfig.from_dict(json.loads((out / "config.json").read_text()))
    data = load_data(cfg)
    (x, y), classes = data.train, int(torch.cat([data.train[1], data.test[1]]).max()) + 1
    model = build_model(cfg, tuple(x.shape[1:]), classes)
    model.load_state_dict(torch.load(out / "checkpoint.pt", weights_only=True)["model"])
    with torch.no_grad():
        by_hand = 100.0 * float((model.eval()(x).argmax(1) == y).float().mean())
    assert scores["train"] == pytest.approx(by_hand, abs=0.005)
    assert scores["train"] != pytest.approx(logged["train_accuracy"], abs=0.005)  # not the running accuracy

    _one_line_error(capsys, ["evaluate", str(out), "--split", "val"], "unknown split(s) ['val']")
    _one_line_error(capsys, ["evaluate", str(tmp_path)], "no checkpoint at")
    saved = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**saved, "lr": 0.5}))
    _one_line_error(capsys, ["evaluate", str(out)], "does not describe the checkpoint", "['lr']")


def test_compare_with_target_propagation_records_and_states_its_own_optimizer(tmp_path, capsys):
    """dtp trains with Adam at a constant lr whatever the defaults say: its config.json said sgd, cosine,
    and the report called the runs one budget."""
    import json

    assert main(["compare", "--rules", "bp,dtp", "--dataset", "synthetic", "--epochs", "1", "--out",
                 str(tmp_path), "--no-progress"]) == 0
    note = "Not one optimizer: bp: sgd, cosine lr; dtp: adam, constant lr."
    assert note in capsys.readouterr().out and note in (tmp_path / "report.md").read_text()
    saved = json.loads((tmp_path / "dtp" / "config.json").read_text())
    assert (saved["optimizer"], saved["lr_schedule"]) == ("adam", "constant")
    assert main(["compare", "--rules", "bp", "--seed", "7", "--seeds", "0,1", "--dataset", "synthetic",
                 "--epochs", "1", "--out", str(tmp_path / "s"), "--no-progress"]) == 2
    assert "--seed and --seeds exclude each other" in capsys.readouterr().err


def test_download_and_data_dir_for_data_that_takes_none_are_refused(tmp_path, capsys):
    """--download and --data-dir were accepted and ignored for the synthetic data (made in memory), and
    --download for imagenet (image folders are read, never downloaded), as the text datasets refuse them."""
    from nowt.data import load_dataset

    with pytest.raises(ValueError, match="--download: not for the synthetic dataset"):
        load_dataset("synthetic", download=True)
    with pytest.raises(ValueError, match="--data-dir: not for the synthetic dataset"):
        load_dataset("synthetic", root=str(tmp_path))
    with pytest.raises(ValueError, match="--download: not for 'imagenet'"):
        load_dataset("imagenet", root=str(tmp_path), download=True)
    _one_line_error(capsys, ["train", "--dataset", "synthetic", "--download", "--data-dir", str(tmp_path)],
                    "--download, --data-dir: not for the synthetic dataset")
    assert load_dataset("synthetic").num_classes == 4  # left alone: as before


def test_help_says_where_workers_and_the_optimizer_flags_do_not_reach(monkeypatch):
    """--workers has no effect on in-memory tensor data (it batches itself, no DataLoader), and the noise
    phase of --noise-pretrain runs its own SGD (momentum 0.9, no decay, one group, fp32): the help says so."""
    import nowt.noise
    from nowt.cli import build_parser
    from nowt.train import TrainConfig, fit
    from nowt.train.factories import TensorLoader, make_loader

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a.help for a in train._actions if a.option_strings}
    assert "no effect on in-memory tensor data" in flags["num_workers"]
    assert "--weight-decay, --momentum, --bias-lr-scale and --amp do not apply" in flags["noise_pretrain"]
    assert isinstance(make_loader((torch.zeros(4, 2), torch.zeros(4)), 2, num_workers=3), TensorLoader)
    made = []
    real = nowt.noise.make_optimizer
    monkeypatch.setattr(nowt.noise, "make_optimizer", lambda *a: made.append(a) or real(*a))
    fit(TrainConfig(dataset="synthetic", hidden=(8,), epochs=1, train_size=64, noise_pretrain=2,
                    weight_decay=0.1, momentum=0.5, bias_lr_scale=3.0), progress=False)
    (name, params, lr, momentum, decay), = made
    assert (name, lr, momentum, decay) == ("sgd", 0.01, 0.9, 0.0)
    assert isinstance(params[0], torch.nn.Parameter)  # one group: no bias lr scale
