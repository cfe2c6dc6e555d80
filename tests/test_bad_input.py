"""Bad input found by an audit: each ended in a traceback, a message naming the wrong thing, or a run that
trained on something other than what was asked. Each is now one line naming the problem
(docs/guarantees.md)."""

import gzip
import struct

import pytest
import torch
from torch import nn

SMALL = ["--hidden", "8", "--epochs", "1", "--no-progress"]


def _refused(capsys, argv, *says):
    from nowt.cli import main

    assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for part in says:
        assert part in err, (part, err)


def test_flags_that_trained_nothing_or_were_ignored_are_refused(capsys):
    """--drop-last dropping every batch ended in a ZeroDivisionError; --lr beside --lr-grid, an empty
    --lr-grid and --holdout 0 were accepted and ignored; repeated --lr-milestones cut the lr 100-fold."""
    synthetic = ["--dataset", "synthetic", *SMALL]
    step = ["--lr-schedule", "step", "--epochs", "4", "--lr-milestones"]
    _refused(capsys, ["train", *synthetic, "--train-size", "20", "--batch-size", "64", "--drop-last"],
             "--drop-last with --batch-size 64 drops all 20 training examples")
    _refused(capsys, ["train", *synthetic, *step, "2,2"],
             "lr_milestones (--lr-milestones) must be increasing epochs", "(2, 2)")
    _refused(capsys, ["train", *synthetic, *step, "3,2"], "must be increasing epochs")
    _refused(capsys, ["compare", *synthetic, "--rules", "fa", "--lr", "0.5", "--lr-grid", "0.1"],
             "--lr and --lr-grid exclude each other")
    _refused(capsys, ["compare", *synthetic, "--rules", "fa", "--lr-grid", "0.1", "--holdout", "0"],
             "--holdout 0: hold out at least 1 training example")
    _refused(capsys, ["evaluate", "nowhere", "--split", ","], "--split is empty")
    _refused(capsys, ["report", "runs/a", "runs/b/../a"], "run runs/b/../a is given twice")
    from nowt.cli import main

    # an empty list flag was its default, as though not given (`--lr-grid ,` ran no grid, `--blocks ,` none)
    for argv in (["train", *synthetic, "--rule", "dfa", "--blocks", ","],
                 ["compare", *synthetic, "--rules", "fa", "--lr-grid", ","]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and f"{argv[-2]}: no items in ','" in capsys.readouterr().err
    # an abbreviated flag was taken for the longer one: `--rule bp` after `--rules fa` trained bp
    for argv in (["compare", *synthetic, "--rules", "fa", "--rule", "bp"],
                 ["train", *synthetic, "--input", "0.1"]):
        with pytest.raises(SystemExit) as stop:
            main(argv)
        assert stop.value.code == 2 and f"unrecognized arguments: {argv[-2]}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["reproduce", "akrout2019", "--seeds", ",", "--gather"])
    assert stop.value.code == 2 and "--seeds: no items in ','" in capsys.readouterr().err
    _refused(capsys, ["reproduce", "akrout2019", "--runs", ",", "--gather"], "--runs is empty")


def test_a_toml_key_given_twice_is_refused(tmp_path, capsys):
    from nowt.train import TrainConfig

    config = tmp_path / "run.toml"
    config.write_text("train-size = 256\ntrain_size = 300\n")
    _refused(capsys, ["train", "--config", str(config)],
             "train_size given twice (as train-size and train_size)")
    with pytest.raises(ValueError, match=r"train_size given twice"):
        TrainConfig.from_dict({"train-size": 256, "train_size": 300})


def test_a_model_that_cannot_take_the_inputs_is_one_line(capsys):
    """Each ended in torch's traceback from the first forward."""
    _refused(capsys, ["train", "--model", "mnist_fc", "--image-size", "14", "--epochs", "1", "--no-progress",
                      "--train-size", "100"],
             "model 'mnist_fc' cannot take inputs of shape (1, 14, 14)", "shapes cannot be multiplied")
    _refused(capsys, ["train", "--model", "convnet", "--image-size", "3", "--epochs", "1", "--no-progress",
                      "--train-size", "100"], "model 'convnet' cannot take inputs of shape (1, 3, 3)")
    _refused(capsys, ["train", "--model", "mnist_fc", "--image-size", "14", "--epochs", "1", "--no-progress",
                      "--train-size", "100", "--rule", "tp"], "model 'mnist_fc' cannot take inputs")


def test_a_tiny_image_size_is_not_taken_for_test_files_in_the_training_set():
    """At --image-size 1 every test image equals some training image: the check of the files refused it as
    "the training set holds the test set". The check reads the files' own images, before any resize."""
    from nowt.data import load_dataset

    data = load_dataset("mnist", image_size=1, train_size=100)
    assert data.input_shape == (1, 1, 1)


def _idx(array: torch.Tensor) -> bytes:
    return bytes([0, 0, 8, array.dim()]) + struct.pack(f">{array.dim()}I", *array.shape) + \
        array.to(torch.uint8).numpy().tobytes()


def test_an_empty_training_set_is_named(tmp_path, capsys):
    """An MNIST folder of 0 training images ended in a reshape traceback, or (--validation) in "hold out
    between 1 and -1 of the 0 training examples"; fit() given empty tensors too."""
    from conftest import teacher_task

    from nowt.data.datasets import load_mnist
    from nowt.train import TrainConfig, fit

    test_x, test_y = load_mnist("test")
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, tensor in (("train-images-idx3-ubyte", torch.zeros(0, 28, 28)),
                         ("train-labels-idx1-ubyte", torch.zeros(0)),
                         ("t10k-images-idx3-ubyte", (test_x[:, 0] * 255).round()),
                         ("t10k-labels-idx1-ubyte", test_y)):
        (folder / f"{name}.gz").write_bytes(gzip.compress(_idx(tensor)))
    _refused(capsys, ["train", *SMALL, "--data-dir", str(folder)], "the training set is empty")
    _refused(capsys, ["train", *SMALL, "--data-dir", str(folder), "--validation", "5"],
             "the training set is empty")
    train, test = teacher_task()
    with pytest.raises(ValueError, match="the training set is empty"):
        fit(TrainConfig(hidden=(4,), epochs=1), (train[0][:0], train[1][:0]), test, progress=False)


@pytest.mark.parametrize("make, says", [
    (lambda tr, te: ((tr[0], tr[1].float()), te), r"labels must be integer class indices.*torch.float32"),
    (lambda tr, te: ((tr[0], tr[1] > 0), te), r"labels must be integer class indices.*torch.bool"),
    (lambda tr, te: ((tr[0], tr[1] - 1), te), r"training labels must be class indices >= 0, got -1"),
    (lambda tr, te: (tr, (te[0][:, :5], te[1])),
     r"training inputs are \[20\] per example, test inputs \[5\]"),
    (lambda tr, te: ((tr[0].numpy(), tr[1].numpy()), te), r"training data must be an \(inputs, labels\) "
                                                           r"pair of tensors.*ndarray"),
    (lambda tr, te: ((*tr, tr[1]), te), r"training data must be an \(inputs, labels\) pair.*3 items"),
    (lambda tr, te: ((tr[0], nn.functional.one_hot(tr[1])), te),
     r"training labels are \[3\] per example, test labels \[\]"),
    # these three ended in torch's "expected target dtype", a KeyError 0 and "too many values to unpack"
    (lambda tr, te: ((tr[0], tr[1].int()), te), r"labels must be .*got torch.int32: pass labels.long\(\)"),
    (lambda tr, te: ({"x": tr[0], "y": tr[1]}, te), r"training data must be .* or a Dataset, got a dict$"),
    (lambda tr, te: (tr, list(te)), r"test data must be .* got a list of two tensors: pass a tuple"),
    (lambda tr, te: ((tr[0].double(), tr[1]), (te[0].double(), te[1])),
     r"cannot take inputs of shape \(20,\), torch.float64"),
])
def test_fit_names_data_that_does_not_fit(make, says):
    """Each ended in a torch error from deep inside (a reshape, a matmul, a loss) or an AttributeError."""
    from conftest import teacher_task

    from nowt.train import TrainConfig, fit

    train, test = make(*teacher_task())
    with pytest.raises(ValueError, match=says):
        fit(TrainConfig(hidden=(4,), epochs=1), train, test, progress=False)


def test_convert_refuses_an_exclude_or_seed_it_would_misread():
    """exclude=[0] was ignored (layer 0 converted); exclude="fc1" was read as ['f', 'c', '1']; seed=1.5 and
    seed=2**70 ended in torch's errors that do not name the seed."""
    import nowt

    def mlp():
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    with pytest.raises(ValueError, match=r"exclude takes layer names .* or module types, got 0 \(int\)"):
        nowt.convert(mlp(), "fa", exclude=[0])
    with pytest.raises(ValueError, match=r"exclude='fc1' is one string: pass a list, exclude=\['fc1'\]"):
        nowt.convert(mlp(), "fa", exclude="fc1")
    for seed in (1.5, "1", True, 2**70):
        with pytest.raises(ValueError, match=r"seed must be an integer"):
            nowt.convert(mlp(), "fa", seed=seed)
    assert nowt.convert(mlp(), "fa", exclude=["0"])[0].rule.name == "bp"


@pytest.mark.parametrize("kwargs, says", [
    (dict(hidden=(0,)), r"mlp: hidden\[0\] must be an integer >= 1, got 0"),
    (dict(hidden=(64, -3)), r"mlp: hidden\[1\] must be an integer >= 1, got -3"),
    (dict(hidden=(64, 2.5)), r"mlp: hidden\[1\] must be an integer >= 1, got 2.5"),
    (dict(hidden=5), r"mlp: hidden must be a sequence of widths, e.g. \(1000,\), got 5"),
    (dict(num_classes=0), r"mlp: num_classes must be an integer >= 1, got 0"),
    (dict(in_features=0), r"mlp: in_features must be an integer >= 1, got 0"),
])
def test_mlp_refuses_sizes_that_build_no_network(kwargs, says):
    """mlp(hidden=(0,)), num_classes=0 and in_features=0 built layers of width 0 without a word."""
    from nowt import models

    with pytest.raises(ValueError, match=says):
        models.mlp(**kwargs)


def test_convert_and_create_model_refuse_what_builds_nothing():
    """nowt.convert("resnet") ended in an AttributeError ('str' object has no attribute 'named_modules');
    create_model("convnet", in_channels=0) built a convolution of no input channels without a word."""
    import nowt
    from nowt.models import create_model

    with pytest.raises(TypeError, match=r"nowt.convert takes a torch.nn.Module, got str"):
        nowt.convert("resnet18", "fa")
    for name, kwargs in (("convnet", dict(in_channels=0)), ("vit", dict(num_classes=0)),
                         ("resnet20", dict(num_classes=-1)), ("conv1d", dict(width=True))):
        with pytest.raises(ValueError, match=rf"{name}: {next(iter(kwargs))} must be an integer >= 1"):
            create_model(name, **kwargs)


def test_cli_paths_of_the_wrong_kind_are_named(tmp_path, capsys, monkeypatch):
    """--data-dir a file said the MNIST files were not found in 'afile/...'; report --out a file and
    reproduce --verdicts --out a folder without README.md ended in OSError's [Errno 17] / [Errno 2]."""
    from nowt.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").touch()
    _refused(capsys, ["train", "--dataset", "mnist", "--data-dir", "afile", *SMALL],
             "--data-dir afile is a file: give the folder that holds mnist's files")
    assert main(["train", "--dataset", "synthetic", "--out", "run", "--train-size", "40", *SMALL]) == 0
    capsys.readouterr()
    _refused(capsys, ["report", "run", "--out", "afile"], "--out afile is a file: the report is a folder")
    _refused(capsys, ["reproduce", "--verdicts", "--out", str(tmp_path)],
             f"{tmp_path} has no README.md to write the verdicts into")


def test_reproduce_list_with_a_name_lists_that_one(capsys):
    """`reproduce NAME --list` listed every reproduction, ignoring NAME."""
    from nowt.cli import main

    assert main(["reproduce", "song2021", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("song2021:") and "akrout2019" not in out
    assert main(["reproduce", "--list"]) == 0
    assert "akrout2019:" in capsys.readouterr().out
