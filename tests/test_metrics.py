import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_mlp
from torch import nn

import nowt


def test_angle_is_exact_at_zero_and_right_angles():
    a = torch.randn(50, dtype=torch.double)
    assert nowt.angle(a, a) == 0.0
    assert nowt.angle(a, 3 * a) < 1e-9
    assert abs(nowt.angle(a, -a) - 180.0) < 1e-9
    assert abs(nowt.angle(torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])) - 45.0) < 1e-9
    assert math.isnan(nowt.angle(torch.zeros(3), a[:3]))


def test_weight_angles_zero_for_bp_and_match_definition_for_fa():
    assert set(nowt.weight_angles(nowt.convert(tiny_mlp(), "bp")).values()) == {0.0}
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    w, b = model[2].weight.detach().flatten(), model[2].feedback.flatten()
    expected = math.degrees(math.acos(float(w @ b / (w.norm() * b.norm()))))
    assert abs(nowt.weight_angles(model)["2"] - expected) < 1e-6



def test_weight_norm_ratios_by_hand():
    """||B|| / ||W|| from the entries; 1 under bp; dfa's reference is the product of the downstream weights;
    nan where W is zero."""
    assert set(nowt.weight_norm_ratios(nowt.convert(tiny_mlp(), "bp")).values()) == {1.0}
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    w, b = model[2].weight.detach(), model[2].feedback
    by_hand = math.sqrt(float((b * b).sum())) / math.sqrt(float((w * w).sum()))
    assert nowt.weight_norm_ratios(model)["2"] == pytest.approx(by_hand, rel=1e-6)
    dfa = nowt.convert(tiny_mlp(), "dfa", seed=0)
    dfa(torch.randn(4, 5, dtype=torch.double))  # B is drawn at the first forward
    fb, ref = nowt.metrics.alignment_pairs(dfa)["0"]
    assert nowt.weight_norm_ratios(dfa)["0"] == pytest.approx(float(fb.norm() / ref.norm()), rel=1e-6)
    with torch.no_grad():
        model[2].weight.zero_()
    assert math.isnan(nowt.weight_norm_ratios(model)["2"])
    angles = nowt.weight_angles(model)
    assert set(nowt.weight_norm_ratios(model)) == set(angles)  # the same layers, in the same order


def test_training_logs_weight_norm_ratios(tmp_path):
    from nowt.train import TrainConfig, fit

    with warnings.catch_warnings(record=True) as caught:  # torch warned of float() on W at every epoch
        warnings.simplefilter("always")
        history = fit(TrainConfig(rule="fa", dataset="synthetic", hidden=(8,), epochs=1, train_size=64),
                      progress=False)
    assert not [str(w.message) for w in caught if "requires_grad" in str(w.message)]
    ratios = history[-1]["weight_norm_ratios"]
    assert set(ratios) == set(history[-1]["weight_angles"]) and all(r > 0 for r in ratios.values())

def test_update_angles_leave_model_and_grads_untouched():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3))
    nowt.convert(model, "brsf", seed=0)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        model.eval()
        model(x[:4])  # the last input the model saw (weight mirrors use its shape)
        model.train()
    before = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    angles = nowt.update_angles(model, F.cross_entropy, x, y)
    assert model[0].last_input_shape == (4, 5)
    assert angles["4"] == 0.0 and 0 < angles["0"] < 180
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))


def test_update_angles_against_explicit_gradients():
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    x, t = torch.randn(6, 5, dtype=torch.double), torch.randn(6, 2, dtype=torch.double)
    loss_fn = F.mse_loss
    angles = nowt.update_angles(model, loss_fn, x, t)
    loss_fn(model(x), t).backward()
    rule_grad = model[0].weight.grad.clone()
    model.zero_grad()
    with nowt.backprop_mode(model):
        loss_fn(model(x), t).backward()
    assert abs(angles["0"] - nowt.angle(rule_grad, model[0].weight.grad)) < 1e-9
    assert angles["4"] == 0.0 and angles["0"] > 1.0
    assert set(nowt.update_angles(nowt.convert(tiny_mlp(), "bp"), loss_fn, x, t).values()) == {0.0}


def test_output_collapsed_tells_a_dead_network_from_a_live_one():
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).train()
    x = torch.randn(32, 6)
    assert not nowt.output_collapsed(model, x)
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # no hidden ReLU fires: the output is the readout bias
    assert nowt.output_collapsed(model, x)
    assert model.training  # the mode is restored
    with pytest.raises(ValueError, match="at least 2 inputs"):
        nowt.output_collapsed(model, x[:1])


def test_training_records_a_collapse_and_warns_once(monkeypatch):
    from conftest import teacher_task

    from nowt.train import TrainConfig, fit, loop

    real = loop.build_model

    def dead_on_arrival(*args, **kwargs):
        model = real(*args, **kwargs)
        with torch.no_grad():
            model[1].weight.zero_()  # (Flatten, Linear, ReLU, Linear): no hidden unit fires, for any input
            model[1].bias.fill_(-1.0)
        return model

    train, test = teacher_task()
    cfg = TrainConfig(rule="fa", hidden=(8,), activation="relu", epochs=3, batch_size=50, lr=0.1)
    assert not any(r["collapsed"] for r in fit(cfg, train, test, progress=False))
    monkeypatch.setattr(loop, "build_model", dead_on_arrival)
    with pytest.warns(RuntimeWarning, match="epoch 1: the model gives one and the same output") as seen:
        history = fit(cfg, train, test, progress=False)
    assert [r["collapsed"] for r in history] == [True, True, True]
    assert len([w for w in seen if "same output" in str(w.message)]) == 1


def test_update_angles_of_layers_whose_weight_is_computed():
    """A weight-normed layer's or a timm StdConv's `.weight` is a new tensor at every access: the angle was
    taken with respect to one the forward never used and came out nan (under bp too). It is now taken over
    what the optimizer updates (weight norm's g and v, StdConv's raw weight and gain)."""
    from test_convert_zoo import ScaledStdConv2d

    def make():
        torch.manual_seed(0)
        return nn.Sequential(ScaledStdConv2d(2, 3, 3, gain_init=0.7), nn.Tanh(), nn.Flatten(),
                             nn.utils.parametrizations.weight_norm(nn.Linear(3 * 16, 6)), nn.Tanh(),
                             nn.Linear(6, 3))
    x, y = torch.randn(8, 2, 4, 4), torch.randint(0, 3, (8,))
    assert nowt.update_angles(nowt.convert(make(), "bp"), F.cross_entropy, x, y) == {"0": 0, "3": 0, "5": 0}
    model = nowt.convert(make(), "fa", seed=0)
    angles = nowt.update_angles(model, F.cross_entropy, x, y)

    def leaf_grads(backprop: bool) -> list[torch.Tensor]:
        model.zero_grad()
        with nowt.backprop_mode(model) if backprop else torch.enable_grad():
            F.cross_entropy(model(x), y).backward()
        return [torch.cat([p.grad.flatten() for p in leaves])
                for leaves in ((model[0]._parameters["weight"], model[0].gain),
                               model[3].parametrizations.weight.parameters())]

    expected = [nowt.angle(r, t) for r, t in zip(leaf_grads(False), leaf_grads(True), strict=True)]
    assert [angles["0"], angles["3"]] == pytest.approx(expected, abs=1e-6) and min(expected) > 1.0


def test_preserved_state_forks_the_rng_of_every_cuda_device_the_model_is_on(monkeypatch):
    """It forked the current CUDA device's RNG only: a model on cuda:1 (current device 0) had the angle
    pass's dropout draws advance its training RNG stream. No GPU here: devices are stood in for."""
    import contextlib
    from types import SimpleNamespace

    from nowt import metrics

    class OnDevices(torch.nn.Module):  # reports tensors on cuda:1 and cuda:3, holds none
        def parameters(self, recurse=True):
            return iter([SimpleNamespace(device=torch.device("cuda", 1))])

        def buffers(self, recurse=True):
            return iter([SimpleNamespace(device=torch.device("cuda", 3)), torch.zeros(1)])

    model = OnDevices()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert metrics.cuda_devices(model) == [0, 1, 3]
    forked = []
    monkeypatch.setattr(torch.random, "fork_rng",
                        lambda devices: forked.append(devices) or contextlib.nullcontext())
    with metrics.preserved_state(torch.nn.Linear(2, 2)):
        pass
    assert forked == [[0]]  # a model on the current device alone: as before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert metrics.cuda_devices(model) == []
