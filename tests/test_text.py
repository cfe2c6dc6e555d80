"""Language modelling: the byte-level text corpus (`nowt.data.text`), the `gpt` decoder under every rule,
sequence losses and metrics in bits per character, and `nowt train --model gpt --dataset fortunes`."""

import argparse
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules

import nowt
from nowt.data import load_dataset
from nowt.data.text import corpus_files, split_text, unigram_bits, windows
from nowt.metrics import evaluate
from nowt.models import create_model
from nowt.train import TrainConfig, fit, make_loss

PER_LAYER = per_layer_rules(any_model=True)


def write_corpus(folder, fortune: bool = True) -> bytes:
    """A few KB of real English (module docstrings of the standard library) as a fortune file beside an
    (empty) index, or as a .txt file; returns the text."""
    text = "\n%\n".join(m.__doc__.strip() for m in (argparse, json, os)).encode()
    folder.mkdir(parents=True, exist_ok=True)
    name = "quips" if fortune else "quips.txt"
    (folder / name).write_bytes(text)
    if fortune:
        (folder / "quips.dat").write_bytes(b"")  # the index fortune(6) reads; nowt only looks for it
        (folder / "quips.u8").symlink_to("quips")  # Debian's UTF-8 alias: no index beside it, skipped
    return text


def test_windows_are_contiguous_with_next_byte_targets():
    x, y = windows(b"abcdefgh", 3)
    assert x.tolist() == [list(b"abc"), list(b"def")] and y.tolist() == [list(b"bcd"), list(b"efg")]
    assert windows(b"a", 3)[0].shape == (0, 3)


def test_each_document_splits_90_5_5_in_order():
    a, b = bytes(range(100)), bytes(range(100, 120))
    train, validation, test = split_text([a, b])
    assert train == a[:90] + b[:18] and validation == a[90:95] + b[18:19] and test == a[95:] + b[19:]


def test_fortunes_folder_loads_as_byte_windows(tmp_path):
    text = write_corpus(tmp_path / "fortunes")
    assert [p.name for p in corpus_files("fortunes", tmp_path / "fortunes")] == ["quips"]
    data = load_dataset("fortunes", root=tmp_path / "fortunes", context=16)
    assert data.num_classes == 256 and data.input_shape == (16,)
    train, validation, test = (bytes(s[0].flatten().tolist()) for s in (data.train, data.validation,
                                                                         data.test))
    cut = round(0.9 * len(text))
    assert text.startswith(train) and text[cut:].startswith(validation)
    assert text[round(0.95 * len(text)):].startswith(test)
    assert len(train) == (cut - 1) // 16 * 16
    first = load_dataset("fortunes", root=tmp_path / "fortunes", context=16, train_size=5).train
    assert torch.equal(first[0], data.train[0][:5]) and torch.equal(first[1], data.train[1][:5])


def test_a_folder_of_txt_files_is_a_corpus(tmp_path):
    write_corpus(tmp_path, fortune=False)
    assert load_dataset("fortunes", root=tmp_path, context=8).train[0].shape[1] == 8


def test_missing_corpus_names_the_path_and_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere; install it with `apt-get install fortunes`"):
        load_dataset("fortunes", root=tmp_path / "nowhere")
    write_corpus(tmp_path)
    with pytest.raises(ValueError, match="--augment: not for the text dataset"):
        load_dataset("fortunes", root=tmp_path, augment=True)
    with pytest.raises(ValueError, match="--context applies to the text datasets"):
        load_dataset("synthetic", context=8)
    with pytest.raises(ValueError, match="validation split holds less than one window"):
        load_dataset("fortunes", root=tmp_path, context=400)


def test_sequence_loss_and_bpc_by_hand():
    out = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # [N=1, T=2, V=3]
    y = torch.tensor([[0, 2]])
    nats = [-math.log(math.exp(2) / (math.exp(2) + 2)), -math.log(1 / (math.e + 2))]
    assert float(make_loss("ce")(out, y)) == pytest.approx(sum(nats) / 2)
    sigmoid = [-math.log(1 / (1 + math.exp(-v))) if hit else -math.log(1 - 1 / (1 + math.exp(-v)))
               for row, t in zip(out[0].tolist(), y[0].tolist(), strict=True)
               for k, v in enumerate(row) for hit in [k == t]]
    assert float(make_loss("bce")(out, y)) == pytest.approx(sum(sigmoid) / 2)  # per token: summed classes
    scores = evaluate(torch.nn.Identity(), [(out, y)], make_loss("ce"))
    assert scores["loss"] == pytest.approx(sum(nats) / 2)
    assert scores["bpc"] == pytest.approx(sum(nats) / 2 / math.log(2))
    assert scores["accuracy"] == 50.0 and scores["top5_error"] == 0.0  # token 0 right, token 1 wrong
    images, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])  # the image path is unchanged
    assert torch.equal(make_loss("ce")(images, labels), F.cross_entropy(images, labels))
    assert "bpc" not in evaluate(torch.nn.Identity(), [(images, labels)])


def test_gpt_is_causal():
    model = create_model("gpt", input_shape=(6,), dim=16, heads=2).eval()
    x = torch.randint(0, 256, (2, 6))
    changed = x.clone()
    changed[:, 4] = (x[:, 4] + 1) % 256
    a, b = model(x), model(changed)
    assert a.shape == (2, 6, 256)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])
    with pytest.raises(ValueError, match="7 tokens exceed its context of 6"):
        model(torch.zeros(1, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"gpt takes token ids \[N, T\].*got torch.float32 \[2, 1, 6, 6\]"):
        model(torch.zeros(2, 1, 6, 6))


@pytest.mark.parametrize("rule", PER_LAYER)
def test_gpt_converts_and_steps_with_every_per_layer_rule(rule):
    torch.manual_seed(0)
    model = nowt.convert(create_model("gpt", input_shape=(8,), dim=16, heads=2), rule, seed=0)
    layers = nowt.feedback_layers(model)
    assert len(layers) == 2 * 4 + 1  # per block: qkv, out_proj, two MLP layers; then the head
    x = torch.randint(0, 256, (3, 8))
    make_loss("ce")(model(x), x).backward()
    assert all(m.weight.grad is not None and torch.isfinite(m.weight.grad).all() for m in layers.values())


def test_dfa_on_gpt_takes_one_error_per_token():
    torch.manual_seed(0)
    for blocks in ((), ("blocks.*",)):
        model = nowt.convert(create_model("gpt", input_shape=(8,), dim=16, heads=2), "dfa", seed=0,
                             blocks=list(blocks))
        x = torch.randint(0, 256, (3, 8))
        make_loss("ce")(model(x), x).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("rule", ["bp", "fa"])
def test_gpt_learns_a_pattern_below_its_unigram_entropy(rule):
    torch.manual_seed(0)
    x, y = windows(b"abcd" * 400, 16)  # a,b,c,d equally often: 2 bits each without context, 0 with it
    model = nowt.convert(create_model("gpt", input_shape=(16,), dim=32, heads=2), rule, seed=0)
    opt = torch.optim.AdamW(model.parameters(), 1e-2)
    loss_fn = make_loss("ce")
    for i in range(40):
        batch = slice(i % 4 * 25, i % 4 * 25 + 25)
        loss = loss_fn(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert unigram_bits(y) == pytest.approx(2.0)
    assert evaluate(model, [(x, y)], loss_fn)["bpc"] < 1.0


def test_nowt_train_gpt_reports_bits_per_character(tmp_path, capsys):
    from nowt.cli import main

    write_corpus(tmp_path / "corpus")
    args = ["train", "--model", "gpt", "--dataset", "fortunes", "--data-dir", str(tmp_path / "corpus"),
            "--context", "16", "--epochs", "2", "--rule", "fa", "--optimizer", "adamw", "--lr", "0.003",
            "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test bpc " in out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_bpc"] for r in records] == pytest.approx([r["test_loss"] / math.log(2) for r in records])
    assert 0 <= records[-1]["train_accuracy"] <= 100 and records[-1]["test_bpc"] < records[0]["test_bpc"]
    assert set(records[-1]["weight_angles"]) == set(records[-1]["update_angles"])
    cfg = TrainConfig(model="gpt", dataset="fortunes", data_dir=str(tmp_path / "corpus"), context=16,
                      epochs=1, train_size=3)
    assert len(fit(cfg, progress=False)) == 1
