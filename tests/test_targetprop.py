import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nowt
from nowt.targetprop import TargetPropTrainer, build_network

ALGORITHMS = ["tp", "dtp", "sdtp", "ao-sdtp"]


def three_layer_net() -> nn.Sequential:
    """f1: 4 -> 5, f2: 5 -> 4 (tanh), f3: 4 -> 3 logits."""
    return build_network((4,), fc=(5, 4), num_classes=3).double()


def batch(n: int = 6):
    return torch.randn(n, 4, dtype=torch.double), torch.tensor([0, 1, 2, 0, 1, 2][:n])


def linear_params(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    layer = next(m for m in module.modules() if isinstance(m, nn.Linear))
    return layer.weight, layer.bias


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_targets_match_hand_computation(algorithm):
    net = three_layer_net()
    tp = TargetPropTrainer(net, algorithm, alpha=0.3, aux_size=2)
    x, y = batch()
    (w1, b1), (w2, b2), (w3, b3) = (linear_params(b) for b in net)
    v2, c2 = linear_params(tp.inverses["2"])
    h1 = torch.tanh(x @ w1.T + b1)
    h2 = torch.tanh(h1 @ w2.T + b2)
    p = torch.softmax(h2 @ w3.T + b3, 1)
    label = F.one_hot(y, 3).double()
    if algorithm in ("tp", "dtp"):
        t2 = h2 - 0.3 * (p - label) @ w3  # the cross-entropy gradient of each example, by hand
    else:
        v3, c3 = linear_params(tp.inverses["3"])
        if algorithm == "ao-sdtp":
            z = torch.tanh(h2 @ tp.auxiliary.weight.T)
            p, label = torch.cat([p, z], 1), torch.cat([label, z], 1)
        t2 = h2 - torch.tanh(p @ v3.T + c3) + torch.tanh(label @ v3.T + c3)
    g_t2 = torch.tanh(t2 @ v2.T + c2)
    t1 = g_t2 if algorithm == "tp" else h1 + g_t2 - torch.tanh(h2 @ v2.T + c2)
    targets = tp.targets(x, y)
    assert set(targets) == {1, 2}
    torch.testing.assert_close(targets[2], t2.detach())
    torch.testing.assert_close(targets[1], t1.detach())


def test_one_dtp_step_matches_hand_gradients():
    """Adam's first step is lr * g / (|g| + eps), so the change of every weight reveals its gradient's
    direction: each layer's loss reaches only its own weights, the inverse loss only the inverse's."""
    net = three_layer_net()
    tp = TargetPropTrainer(net, "dtp", lr=1e-3, inverse_lr=1e-3, sigma=0.0, alpha=0.3)
    x, y = batch()
    (w1, b1), (w2, b2), (w3, b3), (v2, c2) = (
        tuple(p.detach().clone() for p in linear_params(m)) for m in (*net, tp.inverses["2"]))
    targets = tp.targets(x, y)
    n = len(x)
    h1 = torch.tanh(x @ w1.T + b1)
    h2 = torch.tanh(h1 @ w2.T + b2)
    p = torch.softmax(h2 @ w3.T + b3, 1)
    d1 = 2 * (h1 - targets[1]) * (1 - h1**2) / n  # d/d(pre-activation) of mean_b ||h1 - t1||^2
    d2 = 2 * (h2 - targets[2]) * (1 - h2**2) / n
    d3 = (p - F.one_hot(y, 3).double()) / n  # mean cross-entropy
    r = torch.tanh(h2 @ v2.T + c2)  # sigma = 0: the inverse reconstructs h1 from f2(h1) = h2
    dv = -2 * (h1 - r) * (1 - r**2) / n
    expected = {"w1": (d1.T @ x, d1.sum(0)), "w2": (d2.T @ h1, d2.sum(0)), "w3": (d3.T @ h2, d3.sum(0)),
                "v2": (dv.T @ h2, dv.sum(0))}
    before = {"w1": (w1, b1), "w2": (w2, b2), "w3": (w3, b3), "v2": (v2, c2)}
    tp.train_step(x, y)
    after = {"w1": linear_params(net[0]), "w2": linear_params(net[1]), "w3": linear_params(net[2]),
             "v2": linear_params(tp.inverses["2"])}
    for key, grads in expected.items():
        for old, new, g in zip(before[key], after[key], grads, strict=True):
            torch.testing.assert_close(new.detach(), old - 1e-3 * g / (g.abs() + 1e-8), msg=key)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_only_dtp_and_tp_use_a_gradient_below_the_readout(algorithm, monkeypatch):
    """SDTP and AO-SDTP never differentiate anything with respect to an activity: every layer gets a detached
    input and `torch.autograd.grad` is never called. The same guards catch DTP's gradient-based target."""
    net = three_layer_net()
    tp = TargetPropTrainer(net, algorithm, aux_size=2)

    def no_gradient_into_a_layer_input(module, args):
        if args[0].requires_grad:
            raise RuntimeError("a gradient would reach the layer below")

    for block in tp.blocks:
        block.register_forward_pre_hook(no_gradient_into_a_layer_input)

    def forbidden(*args, **kwargs):
        raise RuntimeError("torch.autograd.grad called")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    x, y = batch()
    if algorithm in ("tp", "dtp"):
        with pytest.raises(RuntimeError, match="gradient would reach|autograd.grad called"):
            tp.train_step(x, y)
    else:
        tp.train_step(x, y)
        tp.targets(x, y)


class ExactInverse(nn.Module):
    """g(h) = W^{-1} (h - b): the exact inverse of an invertible linear layer."""

    def __init__(self, layer: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("inverse", torch.linalg.inv(layer.weight.detach()))
        self.register_buffer("bias", layer.bias.detach().clone())

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.bias) @ self.inverse.T


@pytest.mark.parametrize("algorithm", ["dtp", "tp"])
def test_exact_inverses_of_linear_layers_give_the_algebraic_targets(algorithm):
    net = nn.Sequential(*(nn.Linear(3, 3) for _ in range(3)), nn.Linear(3, 2)).double()
    exact = {2: ExactInverse(net[1]), 3: ExactInverse(net[2])}
    tp = TargetPropTrainer(net, algorithm, alpha=0.5, inverses=exact)
    x, y = torch.randn(5, 3, dtype=torch.double), torch.tensor([0, 1, 1, 0, 1])
    targets = tp.targets(x, y)
    w2, w3, w4 = net[1].weight, net[2].weight, net[3].weight
    h1 = net[0](x)
    h2, h3 = net[1](h1), net[2](net[1](h1))
    delta = (torch.softmax(net[3](h3), 1) - F.one_hot(y, 2)) @ w4  # dL/dh3 per example
    # With g = f^{-1}, g(h_l) = h_{l-1}: both TP and DTP give t_{l-1} = f_l^{-1}(t_l), i.e. for linear layers
    # t_l = h_l - alpha (W_{l+1}^{-1} ... W_{L-1}^{-1}) dL/dh_{L-1}: a Gauss-Newton-like step on each layer.
    torch.testing.assert_close(targets[3], (h3 - 0.5 * delta).detach())
    torch.testing.assert_close(targets[2], (h2 - 0.5 * delta @ torch.linalg.inv(w3).T).detach())
    torch.testing.assert_close(targets[1], (h1 - 0.5 * delta @ torch.linalg.inv(w3 @ w2).T).detach())
    # ... and each target is mapped exactly onto the target above it.
    torch.testing.assert_close(net[1](targets[1]), targets[2])
    torch.testing.assert_close(net[2](targets[2]), targets[3])
    assert tp.inverse_optimizer is None  # nothing to learn


def xor_task():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 2, generator=g) * 2 - 1
    return x, ((x[:, 0] * x[:, 1]) > 0).long()


def fit_xor(trainer_or_net, epochs: int, step) -> float:
    """The best accuracy on the task, read every 20 epochs (at lr 1e-2 a fit can wander by a few points)."""
    x, y = xor_task()
    model = trainer_or_net.model if isinstance(trainer_or_net, TargetPropTrainer) else trainer_or_net
    best = 0.0
    for epoch in range(1, epochs + 1):
        for i in range(0, 256, 32):
            step(x[i:i + 32], y[i:i + 32])
        if isinstance(trainer_or_net, TargetPropTrainer):
            trainer_or_net.end_epoch()
        if epoch % 20 == 0:
            best = max(best, float((model(x).argmax(1) == y).double().mean()))
    return best


@pytest.fixture(scope="module")
def readout_only_accuracy() -> float:
    """XOR is out of reach of the readout on random hidden features: the hidden layers must learn."""
    torch.manual_seed(0)
    net = build_network((2,), fc=(8, 8), num_classes=2)
    opt = torch.optim.Adam(net[-1].parameters(), 1e-2)

    def step(x, y):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()

    return fit_xor(net, 40, step)


@pytest.mark.parametrize("schedule", ["parallel", "alternating"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_and_schedule_fits_xor(algorithm, schedule, readout_only_accuracy):
    torch.manual_seed(0)
    tp = TargetPropTrainer(build_network((2,), fc=(8, 8), num_classes=2), algorithm, schedule, lr=1e-2,
                           inverse_lr=1e-2, alpha=0.2, aux_size=8)
    # The alternating schedule trains the forward weights in every other epoch only.
    accuracy = fit_xor(tp, 80 if schedule == "parallel" else 120, tp.train_step)
    assert readout_only_accuracy < 0.75
    assert accuracy > 0.9


def tiny_lc_net() -> nn.Sequential:
    return build_network((1, 6, 6), lc=((3, 2, 1), (3, 3, 2)), fc=(8,), num_classes=3).double()


def test_alternating_phases_train_one_side_each_on_an_lc_net():
    tp = TargetPropTrainer(tiny_lc_net(), "dtp", "alternating", lr=1e-2, inverse_lr=1e-2, sigma=0.05)
    assert isinstance(tp.inverses["2"][0], nowt.targetprop.networks.InverseLocallyConnected2d)
    x, y = torch.randn(16, 1, 6, 6, dtype=torch.double), torch.randint(0, 3, (16,))
    forward_before = {k: v.clone() for k, v in tp.model.state_dict().items()}
    errors_before = tp.reconstruction_errors(x)
    assert set(errors_before) == {"1.0", "2.1"}  # g_2 of the second LC layer, g_3 of the FC layer
    assert tp.phase == "inverse"
    for _ in range(30):
        record = tp.train_step(x, y)
    assert record["inverse_loss"] == record["inverse_loss"]  # trained, so not nan
    errors_after = tp.reconstruction_errors(x)
    assert all(errors_after[k] < errors_before[k] for k in errors_before)
    assert all(torch.equal(v, tp.model.state_dict()[k]) for k, v in forward_before.items())
    tp.end_epoch()
    assert tp.phase == "forward"
    inverses_before = {k: v.clone() for k, v in tp.inverses.state_dict().items()}
    loss_before = tp.train_step(x, y)["loss"]
    for _ in range(30):
        record = tp.train_step(x, y)
    assert record["loss"] < loss_before
    assert all(torch.equal(v, tp.inverses.state_dict()[k]) for k, v in inverses_before.items())


def test_state_dict_round_trip_continues_identically():
    x, y = batch()

    def make(seed):
        torch.manual_seed(seed)
        return TargetPropTrainer(three_layer_net(), "ao-sdtp", "alternating", sigma=0.1, aux_size=3,
                                 seed=seed)

    a = make(0)
    for _ in range(2):
        a.train_step(x, y)
    a.end_epoch()
    a.train_step(x, y)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = make(1)
    b.load_state_dict(torch.load(buffer, weights_only=True))
    assert b.phase == a.phase == "forward"
    a.end_epoch()
    b.end_epoch()
    for _ in range(2):  # an inverse epoch (noise from the restored generator), then a forward one
        ra, rb = a.train_step(x, y), b.train_step(x, y)
        assert ra == rb
        a.end_epoch()
        b.end_epoch()
        a.train_step(x, y), b.train_step(x, y)
    for sa, sb in ((a.model, b.model), (a.inverses, b.inverses), (a.auxiliary, b.auxiliary)):
        for (k, va), vb in zip(sa.state_dict().items(), sb.state_dict().values(), strict=True):
            torch.testing.assert_close(va, vb, msg=k)
    with pytest.raises(ValueError, match="state is of"):
        TargetPropTrainer(three_layer_net(), "dtp").load_state_dict(a.state_dict())


def test_update_angles_leave_the_trainer_untouched():
    tp = TargetPropTrainer(three_layer_net(), "dtp", alpha=0.01)
    x, y = batch()
    state = {k: v.clone() for k, v in tp.model.state_dict().items()}
    angles = tp.update_angles(x, y)
    assert list(angles) == ["0.1", "1.1", "2.1"]
    assert angles["2.1"] == 0.0  # the readout learns from the task loss itself
    # DTP's penultimate target is a small gradient step, so its layer update is the backprop direction.
    assert angles["1.1"] < 1.0
    assert 0 < angles["0.1"] < 180
    assert all(torch.equal(v, tp.model.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in tp.model.parameters())


def test_registry_and_bad_arguments():
    assert {"tp", "dtp", "sdtp", "ao-sdtp"} <= set(nowt.list_rules())
    with pytest.raises(ValueError, match="TargetPropTrainer"):
        nowt.convert(nn.Sequential(nn.Linear(2, 2)), "dtp")
    with pytest.raises(ValueError, match="unknown target-propagation algorithm"):
        TargetPropTrainer(three_layer_net(), "fa")
    with pytest.raises(ValueError, match="unknown schedule"):
        TargetPropTrainer(three_layer_net(), "dtp", "sometimes")
    with pytest.raises(ValueError, match="Conv2d"):
        TargetPropTrainer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)), "dtp")
    with pytest.raises(ValueError, match="at least one hidden layer"):
        TargetPropTrainer(nn.Sequential(nn.Linear(2, 2)), "dtp")


def test_paper_networks_and_their_inverses_have_the_right_shapes():
    x = torch.rand(2, 1, 28, 28)
    lc_widths = [32 * 14 * 14, 64 * 7 * 7, 1024]
    for make, widths in ((nowt.targetprop.mnist_fc, [256] * 5), (nowt.targetprop.mnist_lc, lc_widths)):
        tp = TargetPropTrainer(make(), "sdtp")
        hs, _ = tp._forward(x)
        assert [h[0].numel() for h in hs[1:-1]] == widths and hs[-1].shape == (2, 10)
        assert all(e >= 0 for e in tp.reconstruction_errors(x).values())
    net = nowt.targetprop.imagenet_lc(image_size=32)
    assert net(torch.rand(1, 3, 32, 32)).shape == (1, 1000)


def test_adam_settings_of_forward_and_inverse_optimizers_reach_torch(tmp_path):
    """Bartunov et al. tune betas and epsilon per run (their Table 5): nowt train's --adam-betas/--adam-eps
    set the forward Adam, --inverse-lr/--inverse-betas/--inverse-eps the inverses', --sigma and --alpha the
    targets; sdtp takes no alpha (it has no gradient target) and says so."""
    from nowt.train import TrainConfig, build_model
    from nowt.train.learners import make_learner
    cfg = TrainConfig(rule="dtp", model="mnist_fc", activation="tanh", optimizer="adam", lr=7.57e-4,
                      adam_betas="0.99,0.95", adam_eps=1e-3, inverse_lr=7.68e-4, inverse_betas=(0.99, 0.999),
                      inverse_eps=1e-4, sigma=0.36, alpha=0.15).validate()
    tp = make_learner(cfg, build_model(cfg, (1, 28, 28), 10), 1)
    fwd, inv = tp.forward_optimizer.param_groups[0], tp.inverse_optimizer.param_groups[0]
    assert (fwd["lr"], fwd["betas"], fwd["eps"]) == (7.57e-4, (0.99, 0.95), 1e-3)
    assert (inv["lr"], inv["betas"], inv["eps"]) == (7.68e-4, (0.99, 0.999), 1e-4)
    assert (tp.sigma, tp.alpha) == (0.36, 0.15)
    # a per-layer rule's Adam takes the same flags
    cfg = TrainConfig(rule="fa", optimizer="adam", adam_betas=(0.9, 0.95), adam_eps=1e-3).validate()
    learner = make_learner(cfg, build_model(cfg, (1, 28, 28), 10), 1)
    group = learner.optimizer.param_groups[0]
    assert (group["betas"], group["eps"]) == ((0.9, 0.95), 1e-3)
    with pytest.raises(ValueError, match="--alpha applies only to: tp, dtp"):
        make_learner(TrainConfig(rule="sdtp", alpha=0.2, optimizer="adam"), build_model(
            TrainConfig(rule="sdtp"), (1, 28, 28), 10), 1)
    with pytest.raises(ValueError, match="Adam and AdamW only"):
        TrainConfig(rule="fa", optimizer="sgd", adam_eps=1e-3).validate()
    with pytest.raises(ValueError, match="two numbers"):
        TrainConfig(optimizer="adam", adam_betas=(0.9, 0.99, 0.9)).validate()


@pytest.mark.parametrize("algorithm,denoise", [("dtp", False), ("sdtp", True), ("ao-sdtp", True)])
def test_sdtp_inverses_denoise_and_dtp_inverses_preserve_the_noise(algorithm, denoise):
    """Bartunov et al.'s Algorithm 1: SDTP's inverse loss is ||h - g(f(h + eps))||^2 (Lee et al.'s DTP:
    ||h~ - g(f(h~))||^2 with h~ = h + eps), checked by hand on one batch with the trainer's own noise."""
    from nowt.distributed import randn_for_shard
    net = three_layer_net()
    tp = TargetPropTrainer(net, algorithm, sigma=0.3, aux_size=2)
    assert tp.denoise is denoise
    x, y = batch()
    with torch.no_grad():
        h1 = net[0](x)
        h2 = net[1](h1)
        g = torch.Generator().manual_seed(0)
        g.set_state(tp.generator.get_state())
        expected = 0.0
        for layer, h in zip(tp.inverse_layers, (h1, h2), strict=False):
            corrupted = h + 0.3 * randn_for_shard(h.shape, generator=g, dtype=h.dtype)
            reconstructed = tp.inverses[str(layer)](tp._layer_map(layer)(corrupted))
            expected += (reconstructed - (h if denoise else corrupted)).pow(2).sum(1).mean()
    assert tp.train_step(x, y)["inverse_loss"] == pytest.approx(float(expected), rel=1e-12)
    assert TargetPropTrainer(three_layer_net(), algorithm, denoise=not denoise).denoise is not denoise


def test_alternating_every_n_batches_switches_what_trains():
    """alternate_every=2: batches 1-2 train only the inverses, 3-4 only the forward weights, and so on, with
    epochs not counting; the count survives a checkpoint; another schedule or another rule refuses it."""
    from nowt.train import TrainConfig
    from nowt.train.factories import rule_options

    tp = TargetPropTrainer(three_layer_net(), "dtp", "alternating", alternate_every=2, lr=1e-2,
                           inverse_lr=1e-2)
    x, y = batch()
    trained = []
    for step in range(6):
        before = [[p.clone() for p in m.parameters()] for m in (tp.model, tp.inverses)]
        tp.train_step(x, y)
        trained.append(tuple(any(not torch.equal(a, b) for a, b in zip(old, m.parameters(), strict=True))
                             for old, m in zip(before, (tp.model, tp.inverses), strict=True)))
        if step == 2:
            tp.end_epoch()  # an epoch's end does not switch this schedule
    assert trained == [(False, True)] * 2 + [(True, False)] * 2 + [(False, True)] * 2
    resumed = TargetPropTrainer(three_layer_net(), "dtp", "alternating", alternate_every=2)
    resumed.load_state_dict(tp.state_dict())
    assert (resumed.steps, resumed.phase) == (6, "forward")
    with pytest.raises(ValueError, match="applies to schedule='alternating' only"):
        TargetPropTrainer(three_layer_net(), "dtp", alternate_every=5)
    with pytest.raises(ValueError, match="number of batches >= 0"):
        TargetPropTrainer(three_layer_net(), "dtp", "alternating", alternate_every=-1)
    cfg = TrainConfig(rule="sdtp", schedule="alternating", alternate_every=50)
    assert rule_options(cfg)["alternate_every"] == 50
    with pytest.raises(ValueError, match="--alternate-every applies only to: tp, dtp, sdtp, ao-sdtp"):
        rule_options(TrainConfig(rule="fa", alternate_every=50))


@pytest.mark.parametrize("algorithm", ["tp", "dtp"])
def test_inverse_options_on_one_hidden_layer_are_refused_not_ignored(algorithm, capsys):
    """TP and DTP learn inverses for hidden layers 2..L-1 only: on one hidden layer (nowt train's default
    --hidden 1000) there is none, so the inverses' options were ignored and the alternating schedule trained
    nothing in every inverse epoch. Refused: set (Python) or given as flags even at their defaults (CLI)."""
    from nowt.cli import build_parser, config_from_args, main
    one_hidden = lambda: nowt.models.mlp(4, (5,), 3, activation="tanh")  # noqa: E731
    tp = TargetPropTrainer(one_hidden(), algorithm)  # the defaults ask for nothing
    assert tp.inverse_layers == [] and tp.inverse_optimizer is None
    for name, value in (("inverse_lr", 0.5), ("sigma", 0.9), ("inverse_betas", (0.5, 0.9)),
                        ("inverse_eps", 1e-3), ("schedule", "alternating")):
        with pytest.raises(ValueError, match=f"{name}=.* has no effect: {algorithm} on a network of one "
                                             f"hidden layer has no inverse to learn"):
            TargetPropTrainer(one_hidden(), algorithm, **{name: value})
    TargetPropTrainer(one_hidden(), "sdtp", sigma=0.9, schedule="alternating")  # it learns g_L: taken
    TargetPropTrainer(nowt.models.mlp(4, (5, 5), 3, activation="tanh"), algorithm, sigma=0.9,
                      schedule="alternating")  # two hidden layers: g_2 learns
    argv = ["train", "--rule", algorithm, "--dataset", "synthetic", "--activation", "tanh", "--epochs", "1"]
    for flag, value in (("--inverse-lr", "0.0001"), ("--sigma", "0.1"), ("--inverse-betas", "0.9,0.999"),
                        ("--inverse-eps", "1e-8"), ("--schedule", "alternating")):
        assert main([*argv, "--hidden", "8", flag, value]) == 2
        err = capsys.readouterr().err
        assert f"{flag} has no effect: {algorithm} on a network of one hidden layer" in err, err
        config_from_args(build_parser().parse_args([*argv, "--hidden", "8,8", flag, value]))  # accepted
