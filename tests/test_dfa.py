"""DFA and IFA: hand computations, storages, no weight transport, skips, training, diagnostics, errors."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import half_square_error, tiny_convnet, tiny_mlp
from torch import nn
from torch.nn.grad import conv2d_weight

import nowt
from nowt.rules.dfa import storage as dfa_storage

STORAGES = ["dense", "shared", "seeded"]
D = torch.double


def _fb(layer):
    return layer.feedback.detach().flatten(1)


@pytest.mark.parametrize("storage,chunk", [("dense", 4096), ("dense", 2), ("shared", 3), ("seeded", 2)])
def test_mlp_matches_hand_computation(storage, chunk):
    model = nowt.convert(tiny_mlp(), "dfa", seed=1, storage=storage, chunk=chunk)
    l1, l2, l3 = model[0], model[2], model[4]
    x = torch.randn(7, 5, dtype=D, requires_grad=True)
    e = half_square_error(model, x, torch.randn(7, 2, dtype=D))
    with torch.no_grad():
        h1 = torch.tanh(x @ l1.weight.T + l1.bias)
        a2 = h1 @ l2.weight.T + l2.bias
        h2 = a2.relu()
        d2 = (e @ _fb(l3)) * (a2 > 0)  # hidden layers learn from (B e) * f'(a)
        d1 = (e @ _fb(l2)) * (1 - h1**2)
    for layer, delta, inp in [(l3, e, h2), (l2, d2, h1), (l1, d1, x.detach())]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, e @ _fb(l1), rtol=1e-10, atol=1e-12)  # the input gets its projection
    assert l1.feedback.shape == (2, 5) and l2.feedback.shape == (2, 4) and l3.feedback.shape == (2, 3)


@pytest.mark.parametrize("storage", STORAGES)
def test_convnet_with_strided_grouped_conv_matches_hand_computation(storage):
    model = nowt.convert(tiny_convnet(), "dfa", seed=2, storage=storage, chunk=5)
    c1, c2, fc = model[0], model[2], model[4]
    x = torch.randn(3, 4, 8, 8, dtype=D)
    e = half_square_error(model, x, torch.randn(3, 2, dtype=D))
    with torch.no_grad():
        h1 = torch.tanh(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1, groups=2))
        h2 = F.conv2d(h1, c2.weight, None, dilation=2)
        g2 = (e @ _fb(fc)).view(h2.shape)  # the Linear's input gradient, unflattened
        d1 = (e @ _fb(c2)).view(h1.shape) * (1 - h1**2)
        want = {
            "fc": (e.T @ h2.flatten(1), e.sum(0)),
            "c2": (conv2d_weight(h1, c2.weight.shape, g2, dilation=2), None),
            "c1": (conv2d_weight(x, c1.weight.shape, d1, stride=2, padding=1, groups=2), d1.sum((0, 2, 3))),
        }
    assert c1.feedback.shape == (2, 4, 8, 8) and c2.feedback.shape == (2, 6, 4, 4)
    for layer, name in [(fc, "fc"), (c2, "c2"), (c1, "c1")]:
        torch.testing.assert_close(layer.weight.grad, want[name][0], rtol=1e-10, atol=1e-12)
        if want[name][1] is not None:
            torch.testing.assert_close(layer.bias.grad, want[name][1], rtol=1e-10, atol=1e-12)


def _grads(storage, chunk, seed=3):
    torch.manual_seed(0)
    model = nowt.convert(tiny_convnet(), "dfa", seed=seed, storage=storage, chunk=chunk)
    x = torch.randn(3, 4, 8, 8, dtype=D, requires_grad=True)
    model(x).sin().sum().backward()
    return model, [p.grad for p in model.parameters()] + [x.grad]


def test_seeded_storage_redraws_exactly_the_dense_matrix_and_keeps_only_seeds(monkeypatch):
    dense, g_dense = _grads("dense", 7)
    drawn = []
    real = dfa_storage.draw_chunk
    monkeypatch.setattr(dfa_storage, "draw_chunk", lambda *a: drawn.append(a[3]) or real(*a))
    seeded, g_seeded = _grads("seeded", 7)
    assert all(torch.equal(a, b) for a, b in zip(g_dense, g_seeded, strict=True))
    assert drawn and max(drawn) <= 7  # the extra memory of a backward is one n_out x chunk block
    for a, b in zip(nowt.feedback_layers(dense).values(), nowt.feedback_layers(seeded).values(), strict=True):
        assert torch.equal(a.feedback, b.feedback)  # materialised on access, the dense matrix it stands for
    assert "feedback" not in dict(seeded.named_buffers(recurse=True)) and not any(
        n.endswith(".feedback") for n, _ in seeded.named_buffers())
    assert sum(b.numel() for b in seeded.buffers()) < 20  # seeds and shapes only
    assert not torch.equal(g_dense[0], _grads("dense", 7, seed=4)[1][0])  # another seed, another B


def test_shared_storage_multiplies_e_by_its_matrix_once_per_backward(monkeypatch):
    """Every layer reads its columns of one e @ S (TinyDFA's saving): three layers, one product a backward,
    and a new backward (another e) makes a new one."""
    products = []
    real = dfa_storage.SharedProduct.__call__
    monkeypatch.setattr(dfa_storage.SharedProduct, "__call__",
                        lambda self, e, m: products.append(real(self, e, m)) or products[-1])
    model = nowt.convert(tiny_mlp(), "dfa", seed=1, storage="shared")
    x = torch.randn(7, 5, dtype=D, requires_grad=True)
    for step in (1, 2):
        half_square_error(model, x, torch.randn(7, 2, dtype=D))
        assert len(products) == 3 * step  # the three layers' input gradients, x's included
        assert len({id(p) for p in products[3 * step - 3:]}) == 1  # ... all read off one product
    assert products[0] is not products[3]


def test_shared_storage_is_one_matrix_sliced_per_layer():
    model, _ = _grads("shared", 5)
    shared = model.dfa_feedback
    assert shared.shape == (2, 4 * 8 * 8)  # n_out x the widest layer input
    assert [n for n, _ in model.named_buffers() if "feedback" in n and "seed" not in n and "shape" not in n] \
        == ["dfa_feedback"]
    for layer in nowt.feedback_layers(model).values():
        cols = layer.feedback[0].numel()
        scale = 1 / math.sqrt(cols)
        torch.testing.assert_close(layer.feedback.flatten(1), shared[:, :cols] * scale, rtol=0, atol=0)


def test_default_feedback_is_uniform_scaled_by_layer_size_and_seeded():
    model = nowt.convert(nowt.models.mlp(100, (400,), 10), "dfa", seed=0)
    model(torch.randn(2, 100))
    b = model[3].feedback  # (10, 400): the hidden layer of 400 units it feeds
    bound = 1 / math.sqrt(400)
    assert b.abs().max() <= bound and b.abs().max() > 0.99 * bound
    assert abs(b.abs().mean().item() - bound / 2) < 0.05 * bound  # |U(-c, c)| has mean c/2
    again = nowt.convert(nowt.models.mlp(100, (400,), 10), "dfa", seed=0)
    again(torch.randn(2, 100))
    assert torch.equal(again[3].feedback, b)
    assert nowt.convert(nn.Linear(3, 2), "dfa", zero_init=True).weight.abs().sum() == 0


def test_xavier_feedback_is_glorot_uniform_and_train_init_xavier_selects_it():
    from nowt.train import TrainConfig, build_model
    model = nowt.convert(nowt.models.mlp(100, (400,), 10), "dfa", seed=0, feedback_init="xavier")
    model(torch.randn(2, 100))
    plain = nowt.convert(nowt.models.mlp(100, (400,), 10), "dfa", seed=0)
    plain(torch.randn(2, 100))
    bound = math.sqrt(6 / (400 + 10))  # fans: the 400 inputs it feeds and the 10 errors
    b = model[3].feedback
    assert b.abs().max() <= bound and b.abs().max() > 0.99 * bound
    torch.testing.assert_close(b, plain[3].feedback * bound * math.sqrt(400))  # same draws, Glorot bound
    built = build_model(TrainConfig(rule="dfa", hidden=(400,), init="xavier"), (100,), 10)
    built(torch.randn(2, 100))
    assert built[3].feedback.abs().max() > 0.99 * bound
    with pytest.raises(ValueError, match="feedback_init"):
        nowt.convert(nn.Linear(3, 2), "dfa", feedback_init="glorot")


def _first_layer_grads(make, rule, x, tamper):
    torch.manual_seed(0)
    model = nowt.convert(make(), rule, seed=0)
    out = model(x)
    if tamper:
        for layer in list(nowt.feedback_layers(model).values())[1:]:
            layer.weight.data.mul_(-3.0).add_(1.0)
    out.square().sum().backward()
    first = next(iter(nowt.feedback_layers(model).values()))
    return first.weight.grad.clone(), first.bias.grad.clone()


@pytest.mark.parametrize("make,shape,rule", [(tiny_mlp, (4, 5), "dfa"), (tiny_convnet, (2, 4, 8, 8), "dfa"),
                                             (tiny_mlp, (4, 5), "ifa"), (tiny_mlp, (4, 5), "bp")])
def test_hidden_updates_do_not_depend_on_downstream_weights(make, shape, rule):
    x = torch.randn(*shape, dtype=D)
    same = all(torch.equal(a, b) for a, b in zip(_first_layer_grads(make, rule, x, False),
                                                 _first_layer_grads(make, rule, x, True), strict=True))
    assert same != (rule == "bp")  # under backprop the tampering must show, or this test proves nothing
    assert not nowt.make_rule(rule).transports_weights or rule == "bp"


class Block(nn.Module):
    """stem conv - relu - [conv_a - relu - conv_b, plus the identity skip] - relu - pool - fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_a, self.conv_b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        s = self.stem(x).relu()
        z = self.conv_b(self.conv_a(s).relu()) + s
        return self.fc(z.relu().mean((2, 3)))


def test_residual_block_skip_carries_downstream_projections_exactly():
    model = nowt.convert(Block().double(), "dfa", seed=0)
    x = torch.randn(2, 3, 5, 5, dtype=D)
    e = half_square_error(model, x, torch.randn(2, 2, dtype=D))
    st, ca, cb, fc = model.stem, model.conv_a, model.conv_b, model.fc
    with torch.no_grad():
        a_s = F.conv2d(x, st.weight, st.bias, padding=1)
        s = a_s.relu()
        a_a = F.conv2d(s, ca.weight, ca.bias, padding=1)
        z = F.conv2d(a_a.relu(), cb.weight, cb.bias, padding=1) + s
        grad_pool = (e @ _fb(fc))[:, :, None, None].expand_as(z) / 25  # fc's projection through the mean
        grad_z = grad_pool * (z > 0)
        grad_s = (e @ _fb(ca)).view(s.shape) + grad_z  # conv_a's projection + the skip's exact gradient
        d_stem = grad_s * (a_s > 0)
        d_a = (e @ _fb(cb)).view(a_a.shape) * (a_a > 0)
    torch.testing.assert_close(st.weight.grad, conv2d_weight(x, st.weight.shape, d_stem, padding=1))
    torch.testing.assert_close(ca.weight.grad, conv2d_weight(s, ca.weight.shape, d_a, padding=1))
    torch.testing.assert_close(cb.weight.grad, conv2d_weight(a_a.relu(), cb.weight.shape, grad_z, padding=1))


def test_resnet20_trains_a_step_with_every_storage():
    for storage in STORAGES:
        torch.manual_seed(0)
        model = nowt.convert(nowt.models.resnet20(num_classes=3), "dfa", seed=0, storage=storage)
        x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 2])
        F.cross_entropy(model(x), y).backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("rule", ["dfa", "ifa"])
def test_fits_a_small_teacher_task(rule):
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x = torch.randn(256, 8)
    with torch.no_grad():
        y = teacher(x)
    # Nøkland trains DFA tanh nets from zero; IFA needs non-zero W to carry the error up the hidden layers.
    model = nowt.convert(nowt.models.mlp(8, (32, 32), 3, "tanh"), rule, seed=0, zero_init=rule == "dfa")
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(300):
        loss = F.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]


def test_ifa_matches_hand_computation():
    model = nowt.convert(tiny_mlp(), "ifa", seed=1)
    l1, l2, l3 = model[0], model[2], model[4]
    x = torch.randn(7, 5, dtype=D)
    e = half_square_error(model, x, torch.randn(7, 2, dtype=D))
    with torch.no_grad():
        h1 = torch.tanh(x @ l1.weight.T + l1.bias)
        a2 = h1 @ l2.weight.T + l2.bias
        d1 = (e @ _fb(l2)) * (1 - h1**2)  # the error reaches the first hidden layer directly
        d2 = (d1 @ l2.weight.T) * (a2 > 0)  # ... and the next one through the forward weights
    for layer, delta, inp in [(l3, e, a2.relu()), (l2, d2, h1), (l1, d1, x)]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0))
    with pytest.raises(AttributeError, match="forward weights"):
        _ = l3.feedback
    assert math.isnan(nowt.weight_angles(model)["0"])


def test_weight_angles_compare_b_with_the_downstream_weight_product():
    model = nowt.convert(tiny_mlp(), "dfa", seed=0, storage="seeded")
    assert all(math.isnan(a) for a in nowt.weight_angles(model).values())  # before the first forward
    model(torch.randn(2, 5, dtype=D))
    w1, w2, w3 = (model[i].weight for i in (0, 2, 4))
    angles = nowt.weight_angles(model)
    assert angles["4"] == nowt.angle(model[4].feedback, w3)
    assert angles["2"] == nowt.angle(model[2].feedback, w3 @ w2)
    assert angles["0"] == nowt.angle(model[0].feedback, w3 @ w2 @ w1)
    conv = nowt.convert(tiny_convnet(), "dfa", seed=0)
    conv(torch.randn(2, 4, 8, 8, dtype=D))
    assert all(math.isnan(a) for a in nowt.weight_angles(conv).values())


def test_update_angles_output_layer_learns_like_backprop():
    model = nowt.convert(tiny_mlp(), "dfa", seed=0)
    x, t = torch.randn(6, 5, dtype=D), torch.randn(6, 2, dtype=D)
    angles = nowt.update_angles(model, F.mse_loss, x, t)
    assert angles["4"] < 1e-5 and angles["0"] > 1e-3 and all(math.isfinite(a) for a in angles.values())
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_and_deepcopy_keep_the_feedback():
    a = nowt.convert(tiny_convnet(), "dfa", seed=0)
    x = torch.randn(2, 4, 8, 8, dtype=D)
    a(x)
    b = nowt.convert(tiny_convnet(), "dfa", seed=9)
    b.load_state_dict(a.state_dict())  # before b's first forward: the lazily made buffers are adopted
    c = copy.deepcopy(a)
    for m in (b, c):
        m(x).sum().backward()
        assert torch.equal(m[0].feedback, a[0].feedback)
    assert torch.equal(b[0].weight.grad, c[0].weight.grad)


class TwoOutputs(nn.Module):
    def __init__(self, shape_3d=False):
        super().__init__()
        self.fc, self.shape_3d = nn.Linear(3, 2), shape_3d

    def forward(self, x):
        y = self.fc(x)
        return y[:, None, None] if self.shape_3d else (y, y)  # [N, T, n_out] is a sequence: 4 dims


def test_clear_errors():
    with pytest.raises(ValueError, match=r"returned tuple, not one \[N, n_out\].*name it with output="):
        nowt.convert(TwoOutputs(), "dfa")(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"one \[N, n_out\] tensor.*\(2, 1, 1, 2\)"):
        nowt.convert(TwoOutputs(shape_3d=True), "dfa")(torch.randn(2, 3))
    model = nowt.convert(tiny_mlp(), "dfa", seed=0)
    with pytest.raises(RuntimeError, match="outside its converted model"):
        model[0](torch.randn(2, 5, dtype=D)).sum().backward()
    seen = []
    model[1].register_forward_hook(lambda m, i, o: seen.append(o))
    model(torch.randn(2, 5, dtype=D))
    with pytest.raises(RuntimeError, match="before the output error e was recorded"):
        seen[-1].sum().backward()  # a loss that does not go through the model's output
    model(torch.randn(2, 5, dtype=D))
    pooled = nowt.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(2, 2)), "dfa")
    pooled(torch.randn(1, 1, 6, 6))
    with pytest.raises(ValueError, match="fixed at the first forward"):
        pooled(torch.randn(1, 1, 8, 8))  # B's shape follows the input's
    with pytest.raises(ValueError, match="unknown storage"):
        nowt.convert(tiny_mlp(), "dfa", storage="sparse")
    with pytest.raises(ValueError, match="ifa supports nn.Sequential MLPs"):
        nowt.convert(tiny_convnet(), "ifa")
    with pytest.raises(AttributeError, match="first forward"):
        _ = nowt.convert(tiny_mlp(), "dfa")[0].feedback


def test_seeded_chunks_drawn_by_threads_are_the_chunks_drawn_in_turn():
    from nowt.rules.dfa import storage
    shape, e = torch.Size((10, 7, 9)), torch.randn(3, 10)
    proj = storage.seeded(5, shape, 0.1, chunk=8, like=torch.empty(0))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = proj(e), proj.matrix(torch.empty(0))
        torch.set_num_threads(3)
        assert len(list(proj.spans())) == 8
        several = proj(e), proj.matrix(torch.empty(0))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, several, strict=True))
    torch.testing.assert_close(one[0], e @ one[1].flatten(1))


class _WithTableBias(nn.Module):
    """A layer fed a fixed table, not the batch (as Swin V2's position-bias MLP is)."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.table_mlp = nn.Linear(4, 3), nn.Linear(2, 3)
        self.register_buffer("table", torch.randn(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.table_mlp(self.table)


def test_a_layer_off_the_batch_is_named_and_can_be_excluded():
    model = nowt.convert(_WithTableBias(), "dfa", seed=0)
    with pytest.raises(ValueError, match=r"layer 'table_mlp'.*exclude=\['table_mlp'\]"):
        model(torch.randn(5, 4))
    model = nowt.convert(_WithTableBias(), "dfa", seed=0, exclude=["table_mlp"])
    model(torch.randn(5, 4)).sum().backward()
    assert model.table_mlp.weight.grad is not None and model.body.weight.grad is not None


def test_seeded_chunks_come_from_a_generator_of_the_layers_device_and_keep_the_cpu_draws(monkeypatch):
    real, made = torch.Generator, []
    monkeypatch.setattr(torch, "Generator", lambda *args: made.append(args) or real(*args))
    chunk = dfa_storage.draw_chunk(7, 2, 3, 5, 0.5, torch.empty(0, dtype=D))
    assert made == [(torch.device("cpu"),)] and chunk.dtype == D  # the device named: a GPU layer's own
    # the CPU's draws as before the generator followed the layer's device: seeded runs resume unchanged
    g = real().manual_seed((7 + 0x9E3779B9 * 2) % 2**32)
    assert torch.equal(chunk, (torch.empty(3, 5).uniform_(-1.0, 1.0, generator=g) * 0.5).to(D))


def test_shared_position_feedback_without_sequences_is_refused():
    model = nowt.convert(tiny_mlp(), "dfa", seed=0, position_feedback="shared")  # an MLP: nothing to share
    with pytest.raises(ValueError, match=r"position_feedback='shared' \(--position-feedback shared\).*"
                                         r"this model has none; drop it"):
        model(torch.randn(2, 5, dtype=D))
    tokens = nowt.convert(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 6, 2)), "dfa",
                          seed=0, position_feedback="shared")
    tokens(torch.randn(2, 6, 3)).sum().backward()  # the first Linear's input is a sequence: accepted
    assert tokens[0].feedback.shape == (2, 3) and tokens[3].feedback.shape == (2, 24)


@pytest.mark.parametrize("rule", ["dfa", "ifa"])
def test_train_init_normal_fan_avg_draws_b_from_the_fan_average_normal(rule):
    """--init normal_fan_avg: DFA's and IFA's B ~ N(0, 1/(fan_in + fan_out)) too (Glorot's fans of B)."""
    from nowt.train import TrainConfig, build_model
    std, made = (400 + 10) ** -0.5, {}  # B (n_out, D) = (10, 400): what the hidden layer of 400 units gets
    for init in ("default", "normal_fan_avg"):
        made[init] = build_model(TrainConfig(rule=rule, hidden=(400,), init=init), (100,), 10)
        made[init](torch.randn(2, 100))
    assert abs(made["default"][3].feedback.std().item() / std - 1) > 0.2  # the default is another draw
    for storage in STORAGES:  # seeded redraws dense's B; shared slices its own matrix, of the same law
        made[storage] = nowt.convert(nowt.models.mlp(100, (400,), 10), rule, seed=0,
                                     feedback_init="normal_fan_avg", storage=storage)
        made[storage](torch.randn(2, 100))
    for b in (made[k][3].feedback for k in ("normal_fan_avg", *STORAGES)):
        assert abs(b.std().item() / std - 1) < 0.05 and abs(b.mean().item()) < 0.1 * std
        assert b.abs().max() > 3 * std  # normal tails: no uniform draw of this std reaches sqrt(3) std
    torch.testing.assert_close(made["seeded"][3].feedback, made["dense"][3].feedback)
