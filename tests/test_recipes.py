"""Training recipes as options: the papers' inits, losses, schedules, optimizers and model options, and the
checks on model options a model does not take."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import mirror_calls, teacher_task

import nowt
import nowt.train as train_mod
from nowt.train import TrainConfig, fit


def test_akrout_init_and_sigmoid_cross_entropy():
    cfg = TrainConfig(rule="fa", hidden=(30,), activation="sigmoid", init="normal_fan_avg", loss="bce")
    model = train_mod.build_model(cfg, (20,), 10)
    layer = model[1]
    std = (20 + 30) ** -0.5
    for t in (layer.weight, layer.feedback, layer.bias):
        assert abs(float(t.std()) / std - 1) < 0.25
        assert abs(float(t.mean())) < 4 * std / t.numel() ** 0.5
    assert not torch.equal(layer.weight, layer.feedback)
    out, y = torch.tensor([[0.0, 2.0]]), torch.tensor([1])
    expected = -(math.log(0.5) + math.log(1 / (1 + math.exp(-2.0))))  # sum over classes of sigmoid CE
    assert float(train_mod.make_loss("bce")(out, y)) == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown init"):
        TrainConfig(init="orthogonal").validate()
    with pytest.raises(ValueError, match="no dropout"):
        train_mod.build_model(TrainConfig(model="lenet", dropout=0.5), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="'lenet' has no hidden option; --hidden applies to: mlp"):
        train_mod.build_model(TrainConfig(model="lenet", hidden=(500,)), (1, 28, 28), 10)
    train_mod.build_model(TrainConfig(model="lenet"), (1, 28, 28), 10)  # the default widths are no request
    fixed = r"'mnist_fc' has no activation option \(its activation is tanh\); --activation applies to: mlp"
    with pytest.raises(ValueError, match=fixed):
        train_mod.build_model(TrainConfig(model="mnist_fc", activation="sigmoid"), (1, 28, 28), 10)
    with pytest.raises(ValueError, match="'convnet' has no activation option; --activation applies to"):
        train_mod.build_model(TrainConfig(model="convnet", activation="tanh"), (3, 32, 32), 10)
    train_mod.build_model(TrainConfig(model="mnist_fc", activation="tanh"), (1, 28, 28), 10)  # what it is


def test_akrout_init_counts_the_fans_of_any_convolution():
    """Conv1d and transposed convolutions get N(0, 1/(fan_in + fan_out)) too, fans as Glorot counts them
    (channels x kernel size), and their random feedback is redrawn alike."""
    from nowt.train.factories import _normal_fan_avg_
    model = nowt.convert(torch.nn.Sequential(torch.nn.Conv1d(8, 40, 5), torch.nn.Tanh(),
                                             torch.nn.ConvTranspose2d(40, 24, 3)), "fa", seed=1)
    before = model[0].feedback.clone()
    _normal_fan_avg_(model, seed=0)
    for layer, std in ((model[0], (8 * 5 + 40 * 5) ** -0.5), (model[2], (40 * 9 + 24 * 9) ** -0.5)):
        for t in (layer.weight, layer.feedback):
            assert abs(float(t.std()) / std - 1) < 0.1, (type(layer).__name__, float(t.std()), std)
    assert not torch.equal(model[0].feedback, before)


def test_bf16_autocast_and_channels_last_train_a_convnet():
    from nowt.train import RuleLearner, build_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(600, 3, 8, 8, generator=g)
    y = (x[:, 0].mean((1, 2)) > 0).long()
    final = {}
    for amp in ("off", "bf16"):
        cfg = TrainConfig(rule="fa", model="convnet", epochs=4, batch_size=25, lr=0.05, amp=amp,
                          channels_last=True)
        final[amp] = fit(cfg, (x[:500], y[:500]), (x[500:], y[500:]), progress=False)[-1]["test_accuracy"]
    assert final["off"] > 65 and abs(final["bf16"] - final["off"]) < 5, final
    cfg = TrainConfig(rule="kp", model="convnet", amp="bf16", channels_last=True)
    model = build_model(cfg, (3, 8, 8), 2)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    before = model[0].weight.detach().clone()
    step = RuleLearner(model, cfg, 10).train_step(x[:25], y[:25])
    assert step["output"].dtype == torch.bfloat16 and model[0].weight.dtype == torch.float32
    assert not torch.equal(before, model[0].weight)
    # the logged update angles are those of the bf16 step taken, not of an fp32 one
    measured = RuleLearner(model, cfg, 10).measure(x[:64], y[:64])["update_angles"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = nowt.update_angles(model, lambda out, t: F.cross_entropy(out.float(), t), x[:64], y[:64])
    fp32 = nowt.update_angles(model, F.cross_entropy, x[:64], y[:64])
    assert measured == bf16 and measured != fp32
    with pytest.raises(ValueError, match="unknown amp"):
        fit(TrainConfig(rule="fa", model="convnet", epochs=1, amp="fp8"), (x[:50], y[:50]), (x[:10], y[:10]),
            progress=False)


def test_weight_mirror_runs_every_eighth_step_with_a_batch_of_noise(monkeypatch):
    calls = mirror_calls(monkeypatch)
    train, test = teacher_task()  # 500 training examples: 21 steps of 24 (the last one partial)
    fit(TrainConfig(rule="wm", hidden=(8,), epochs=1, batch_size=24, mirror_warmup=5), train, test,
        progress=False)
    assert calls[0] == (5, 256)  # the warm-up
    assert calls[1:] == [(1, 24)] * 2  # after steps 8 and 16


def test_nokland_options_input_dropout_and_zero_init():
    from nowt.train import build_model
    cfg = TrainConfig(rule="dfa", hidden=(16, 16), activation="tanh", dropout=0.5, input_dropout=0.1,
                      init="zeros")
    model = build_model(cfg, (20,), 3)
    assert isinstance(model[1], torch.nn.Dropout) and model[1].p == 0.1  # right after Flatten
    weights = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(weights) == 3 and all(not m.weight.any() and not m.bias.any() for m in weights)
    assert all(b.abs().sum() > 0 for m in model.modules() if hasattr(m, "rule")
               for b in m.rule.feedback_tensors(m))  # the feedback stays random
    with pytest.raises(ValueError, match="input_dropout"):
        build_model(TrainConfig(model="convnet", input_dropout=0.1), (3, 32, 32), 10)
    # DFA leaves zero: the random feedback alone breaks the symmetry of the hidden units
    train, test = teacher_task()
    history = fit(TrainConfig(rule="dfa", hidden=(32, 32), activation="tanh", init="zeros", epochs=3,
                              batch_size=50, lr=0.05, lr_schedule="constant"), train, test, progress=False)
    assert history[-1]["test_accuracy"] > 80


def test_plateau_schedule_is_noklands_running_mean_rule():
    from nowt.train import build_model
    from nowt.train.learners import RuleLearner
    cfg = TrainConfig(rule="fa", hidden=(8,), lr=0.1, lr_schedule="plateau", optimizer="sgd")
    learner = RuleLearner(build_model(cfg, (20,), 3), cfg, steps_per_epoch=10)
    x, y = torch.randn(10, 20), torch.randint(0, 3, (10,))
    learner.train_step(x, y)
    assert learner.lr() == 0.1 and learner.steps == 1  # not stepped per batch
    # running means by hand: 0.75 * 1 + 0.25 * 0.5 = 0.875; then 0.75875 ... e >= m halves
    lrs = []
    for train_error in (50, 20, 60, 10, 90):
        learner.end_epoch({"train_accuracy": 100.0 - train_error})
        lrs.append(learner.lr())
    # m: 0.875, 0.70625, 0.6797, 0.5348, 0.626 -> halve at e=0.6 (>= 0.6797? no), at e=0.9 (>= 0.626)
    assert lrs == [0.1, 0.1, 0.1, 0.1, 0.05]
    state = learner.state_dict()
    again = RuleLearner(build_model(cfg, (20,), 3), cfg, steps_per_epoch=10)
    again.load_state_dict(state)
    assert again.lr() == 0.05 and again.steps == 1 and not again.finished
    for _ in range(7):  # an error that never falls: halve every epoch up to 8 halvings, then finish
        again.end_epoch({"train_accuracy": 0.0})
    assert again.scheduler.halvings == 8 and not again.finished
    again.end_epoch({"train_accuracy": 0.0})
    assert again.finished


def test_a_run_that_the_plateau_rule_finishes_stops_early(monkeypatch):
    from nowt.optim import HalveOnPlateau
    monkeypatch.setattr(HalveOnPlateau, "step", lambda self, error: setattr(self, "finished", True))
    train, test = teacher_task()
    history = fit(TrainConfig(rule="fa", hidden=(8,), epochs=5, batch_size=100, lr_schedule="plateau"),
                  train, test, progress=False)
    assert len(history) == 1  # the schedule finished the run after its first epoch


def test_biotorch_options_resize_xavier_lenet_and_milestones(tmp_path):
    from nowt.data import load_dataset
    from nowt.train import build_model
    from nowt.train.learners import RuleLearner
    data = load_dataset("mnist", train_size=50, standardize=False, image_size=32)
    x = data.train[0]
    assert x.shape[1:] == (1, 32, 32) and data.input_shape == (1, 32, 32)
    assert torch.equal(torch.round(x * 255) / 255, x)  # 8-bit levels, as a resized image file
    plain = load_dataset("mnist", train_size=50, standardize=False).train[0]
    assert abs(float(x.mean()) - float(plain.mean())) < 0.01  # a resize keeps the mean brightness
    with pytest.raises(ValueError, match="image-size"):
        load_dataset("synthetic", image_size=32)
    model = build_model(TrainConfig(rule="fa", model="lenet", init="xavier"), (1, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(5, 5), (5, 5), (5, 5)] and convs[2].out_channels == 120
    assert isinstance(model[1], torch.nn.ReLU)
    for m in convs:
        fan_in, fan_out = m.weight[0].numel(), m.weight.shape[0] * m.weight[0, 0].numel()
        bound = math.sqrt(6 / (fan_in + fan_out))
        w = m.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.9 * bound
        assert not m.bias.any()
        (b,) = m.rule.feedback_tensors(m)
        assert float(b.abs().max()) <= bound and not torch.equal(b, m.weight)
    cfg = TrainConfig(rule="bp", hidden=(8,), lr=0.1, lr_schedule="step", lr_milestones=(2, 3), epochs=4)
    learner = RuleLearner(build_model(cfg, (20,), 3), cfg, steps_per_epoch=5)
    lrs = []
    for _ in range(20):
        learner.train_step(torch.randn(4, 20), torch.randint(0, 3, (4,)))
        lrs.append(learner.lr())
    assert [round(v, 6) for v in lrs[4::5]] == [0.1, 0.01, 0.001, 0.001]  # x0.1 after epochs 2 and 3
    with pytest.raises(ValueError, match="lr-milestones"):
        RuleLearner(build_model(cfg, (20,), 3), TrainConfig(lr_milestones=(2,)), steps_per_epoch=5)


def test_make_optimizer_fuses_sgd_and_steps_like_the_default():
    """nowt builds SGD fused (one pass per tensor: KP's B update costs a fraction of the unfused step), and
    the fused step is the default one's arithmetic (torch's vector kernel is bit-identical, its scalar tail
    may round the last bit differently)."""
    from nowt.optim import make_optimizer
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(30, 20))
    b = torch.nn.Parameter(torch.randn(30))
    w0, b0 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    start = w.detach().clone()
    groups = ({"params": (p for p in [w]), "lr": 0.1}, {"params": b, "lr": 0.01})  # a generator, a tensor
    fused = make_optimizer("sgd", groups, 0.1, momentum=0.9, weight_decay=1e-3)
    plain = torch.optim.SGD([{"params": [w0], "lr": 0.1}, {"params": [b0], "lr": 0.01}], lr=0.1,
                            momentum=0.9, weight_decay=1e-3)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    assert [len(g["params"]) for g in fused.param_groups] == [1, 1]
    for _ in range(5):
        gw, gb = torch.randn_like(w), torch.randn_like(b)
        w.grad, b.grad, w0.grad, b0.grad = gw, gb, gw.clone(), gb.clone()
        fused.step()
        plain.step()
    torch.testing.assert_close(w, w0, rtol=1e-6, atol=0)
    torch.testing.assert_close(b, b0, rtol=1e-6, atol=0)
    assert (w.detach() - start).abs().min() > 0  # the steps moved every weight: the comparison is not idle
    # RMSprop has no fused step: the default one, not an error
    assert not make_optimizer("rmsprop", [torch.nn.Parameter(torch.ones(2))], 0.1).defaults.get("fused")


@pytest.mark.parametrize("init", ["xavier", "normal_fan_avg"])
def test_init_reaches_locally_connected_layers_and_their_feedback(init):
    """Bartunov's LC fa row asks Glorot for B as for W: the init once rewrote Linear and convolution layers
    only, leaving a locally connected layer's B at its default (its fans: a unit's inputs, and the units one
    input reaches at one position)."""
    from nowt import lc
    from nowt.train import build_model

    model = build_model(TrainConfig(rule="fa", model="mnist_lc", init=init, seed=0), (1, 28, 28), 10)
    layers = [m for m in model.modules() if isinstance(m, lc.LocallyConnected2d)]
    assert layers
    for m in layers:
        fan_in, fan_out = m.in_channels * 9, m.out_channels * 9  # the LC network's 3x3 kernels, by hand
        std = math.sqrt(2 / (fan_in + fan_out)) if init == "xavier" else (fan_in + fan_out) ** -0.5
        for t in (m.weight, *m.rule.feedback_tensors(m)):
            assert abs(float(t.std()) / std - 1) < 0.05, (init, float(t.std()), std)
        (b,) = m.rule.feedback_tensors(m)
        assert not torch.equal(b, m.weight) and m.fans() == (fan_in, fan_out)
