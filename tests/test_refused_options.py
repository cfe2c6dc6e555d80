"""Options that cannot act are refused or warned, never silently ignored (docs/guarantees.md): the
optimizer's, the rules', the init's, the schedule's, and data fields given beside data."""

import warnings

import pytest
import torch


def test_momentum_with_adam_is_refused_not_ignored(capsys):
    from nowt.cli import main

    argv = ["train", "--dataset", "synthetic", "--hidden", "8", "--epochs", "1", "--no-progress"]
    assert main(argv + ["--optimizer", "adam", "--momentum", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--momentum applies to sgd and rmsprop, not --optimizer adam" in err and err.count("\n") == 1
    assert main(argv + ["--optimizer", "rmsprop", "--momentum", "0.5"]) == 0


def test_options_that_would_be_silently_ignored_are_refused_or_applied():
    """An audit found each of these accepted and then not applied: wm's anneal beside a fixed mirror_lr;
    --init on a model whose attention projections no init rewrites; --bias-lr-scale missing attention's
    in_proj_bias."""

    import nowt
    from nowt.train import TrainConfig, build_model
    from nowt.train.factories import parameter_groups

    with pytest.raises(ValueError, match=r"mirror_anneal \(5\).*with mirror_lr \(0.01\) the step is fixed"):
        nowt.convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), "wm", mirror_lr=0.01, mirror_anneal=5.0)
    nowt.convert(torch.nn.Sequential(torch.nn.Linear(4, 4)), "wm", mirror_lr=0.01)  # the default anneal
    cfg = TrainConfig(model="vit", init="xavier", rule="fa")
    with pytest.raises(ValueError, match=r"--init xavier rewrites Linear, convolution and locally connected "
                                         r"layers only; model vit.*in_proj_weight\): use --init default"):
        build_model(cfg, (1, 28, 28), 10)
    attention = torch.nn.MultiheadAttention(8, 2)
    rest, biases = parameter_groups(attention, 1.0, 0.5)
    assert {id(p) for p in biases["params"]} == {id(attention.in_proj_bias), id(attention.out_proj.bias)}
    assert biases["lr"] == 0.5 and len(rest["params"]) == 2


def test_kp_without_weight_decay_is_warned():
    """kp's B reaches W only through weight decay; nowt train's and compare's default decay is 0."""
    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    with pytest.warns(RuntimeWarning, match="kp aligns B with W only through weight decay.*decay is 0"):
        fit(TrainConfig(rule="kp", hidden=(8,), epochs=1, batch_size=100), *teacher_task(), progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(TrainConfig(rule="kp", hidden=(8,), epochs=1, batch_size=100, weight_decay=1e-4), *teacher_task(),
            progress=False)


def test_options_with_nothing_to_act_on_are_refused():
    """Each was accepted and did nothing: DFA's kernel-form B on a model without convolutions,
    --no-standardize on data without pixels."""

    import nowt
    from nowt.data import load_dataset

    with pytest.raises(ValueError, match="conv_feedback='kernel'.*this model converts none; drop it"):
        mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        nowt.convert(mlp, "dfa", conv_feedback="kernel")
    for name in ("synthetic", "fortunes"):
        with pytest.raises(ValueError, match=f"--no-standardize: {name!r} has no pixels"):
            load_dataset(name, standardize=False)


def test_lr_milestones_past_the_run_are_warned():
    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    with pytest.warns(RuntimeWarning, match="--lr-milestones 50: at or past --epochs 2, never reached"):
        fit(TrainConfig(rule="fa", hidden=(8,), epochs=2, batch_size=100, lr_schedule="step",
                        lr_milestones=(1, 50)), *teacher_task(), progress=False)


def test_fit_given_data_refuses_data_fields_it_would_ignore(tmp_path):
    """fit(cfg, train, test) ignored cfg's train_size, image_size, augment, ... (they say how cfg.dataset is
    loaded) yet recorded them in config.json, from which `nowt evaluate` rebuilds the data."""
    import json

    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    train, test = teacher_task()
    cfg = TrainConfig(hidden=(4,), epochs=1, batch_size=100, train_size=50, augment=True, standardize=False)
    says = r"given its data, to which --train-size, --augment, --standardize would not apply"
    with pytest.raises(ValueError, match=says):
        fit(cfg, train, test, progress=False)
    for field, value in (("image_size", 8), ("context", 4), ("data_dir", str(tmp_path)), ("download", True)):
        with pytest.raises(ValueError, match="would not apply"):
            fit(TrainConfig(hidden=(4,), epochs=1, **{field: value}), train, test, progress=False)
    with pytest.raises(ValueError, match="both train and test data, or neither"):
        fit(TrainConfig(hidden=(4,), epochs=1), train, progress=False)
    # data loaded by the config itself (nowt compare, --lr-grid) says so
    cfg = TrainConfig(dataset="synthetic", hidden=(4,), epochs=1, train_size=100, out_dir=str(tmp_path / "r"))
    from nowt.train.factories import load_data

    data = load_data(cfg)
    assert len(fit(cfg, data.train, data.test, progress=False, data_from_cfg=True)) == 1
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train_size"] == 100
