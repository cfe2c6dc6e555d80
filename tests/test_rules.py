"""Each rule's updates against a hand computation on tiny networks, and backprop against autograd."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_convnet, tiny_mlp
from torch import nn

import nowt

RULES = ["bp", "fa", "usf", "brsf", "frsf", "kp", "wm"]


def test_rules_lists_every_per_layer_rule():
    assert set(RULES) <= set(nowt.list_rules())


@pytest.mark.parametrize("make", [tiny_mlp, tiny_convnet])
def test_bp_equals_plain_autograd_exactly(make):
    model = make()
    ref = copy.deepcopy(model)
    nowt.convert(model, "bp")
    x = torch.randn(3, *((5,) if make is tiny_mlp else (4, 8, 8)), dtype=torch.double, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    model(x).square().sum().backward()
    ref(x_ref).square().sum().backward()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    assert torch.equal(x.grad, x_ref.grad)


def _penalty_grads(model, x):
    """The gradients of a gradient penalty, |d loss / dx|^2, a second derivative (double backward)."""
    (gx,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
    model.zero_grad()
    gx.square().sum().backward()
    return [p.grad for p in model.parameters()]


def test_bp_keeps_double_backward_as_autograd():
    torch.manual_seed(0)
    x = torch.randn(3, 5, dtype=torch.double, requires_grad=True)
    ref = tiny_mlp()
    model = nowt.convert(copy.deepcopy(ref), "bp")
    got, expected = _penalty_grads(model, x), _penalty_grads(ref, x)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("rule", ["fa", "kp", "brsf", "dfa"])
def test_a_second_derivative_through_a_rule_trained_layer_is_refused(rule):
    # It was taken through the rule's backward: kp's B got a penalty gradient W did not, and W one of no
    # defined quantity, silently.
    model = nowt.convert(tiny_mlp(), rule, seed=0)
    with pytest.raises(RuntimeError, match="second derivative through a rule-trained layer"):
        _penalty_grads(model, torch.randn(3, 5, dtype=torch.double, requires_grad=True))


def _feedback_used(layer, rule):
    """The matrix the rule should have used, derived here from the rule's definition."""
    w = layer.weight.detach()
    if rule == "bp":
        return w
    if rule in ("fa", "kp", "wm"):
        return layer.feedback.detach()
    if rule == "usf":
        return torch.sign(w) * w.abs().mean()
    if rule == "frsf":
        return layer.feedback_magnitude * torch.sign(w)
    if rule == "brsf":  # redrawn each batch: read the matrix used, check its form
        fb = layer.feedback.detach()
        assert torch.equal(torch.sign(fb), torch.sign(w)) and (fb.abs() > 0).all()
        return fb
    raise AssertionError(rule)


@pytest.mark.parametrize("rule", RULES)
def test_mlp_updates_match_hand_computation(rule):
    model = nowt.convert(tiny_mlp(), rule, seed=1)
    l1, l2, l3 = model[0], model[2], model[4]
    x = torch.randn(7, 5, dtype=torch.double)
    t = torch.randn(7, 2, dtype=torch.double)
    y = model(x)
    (0.5 * (y - t).square().sum()).backward()
    with torch.no_grad():
        a1 = x @ l1.weight.T + l1.bias
        h1 = torch.tanh(a1)
        a2 = h1 @ l2.weight.T + l2.bias
        h2 = torch.relu(a2)
        e = h2 @ l3.weight.T + l3.bias - t
        d2 = (e @ _feedback_used(l3, rule)) * (a2 > 0)
        d1 = (d2 @ _feedback_used(l2, rule)) * (1 - h1.square())
        expected = {l3: (e.T @ h2, e.sum(0)), l2: (d2.T @ h1, d2.sum(0)), l1: (d1.T @ x, d1.sum(0))}
    for layer, (gw, gb) in expected.items():
        torch.testing.assert_close(layer.weight.grad, gw, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, gb, rtol=1e-12, atol=1e-12)
        if rule == "kp":
            assert torch.equal(layer.feedback.grad, layer.weight.grad)
        elif rule != "bp":
            assert layer.feedback.grad is None and not layer.feedback.requires_grad
    if rule != "bp":  # the rule really differs from backprop
        true_d2 = (e @ l3.weight) * (a2 > 0)
        assert not torch.allclose(l2.weight.grad, true_d2.T @ h1)


def _conv_weight_grad(x, grad_out, layer):
    """Weight gradient by unfolding: sum over batch and positions of grad_out x patch, per group."""
    k, g = layer.kernel_size, layer.groups
    cols = F.unfold(x, k, layer.dilation, layer.padding, layer.stride)  # N, C*kh*kw, L
    go = grad_out.flatten(2)  # N, O, L
    n, ck, n_pos = cols.shape
    cols = cols.view(n, g, ck // g, n_pos)
    go = go.view(n, g, go.shape[1] // g, n_pos)
    gw = torch.einsum("ngol,ngcl->goc", go, cols)
    return gw.reshape(layer.weight.shape)


def _conv_input_grad(grad_out, matrix, layer, input_shape):
    out_pad = [input_shape[-2 + i] - ((grad_out.shape[-2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                      + layer.dilation[i] * (layer.kernel_size[i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(grad_out, matrix, None, layer.stride, layer.padding, out_pad, layer.groups,
                              layer.dilation)


@pytest.mark.parametrize("rule", RULES)
def test_convnet_updates_match_hand_computation(rule):
    model = nowt.convert(tiny_convnet(), rule, seed=2)
    c1, c2, fc = model[0], model[2], model[4]
    x = torch.randn(3, 4, 8, 8, dtype=torch.double)
    out = model(x)
    c = torch.randn_like(out)
    (out * c).sum().backward()
    with torch.no_grad():
        a1 = F.conv2d(x, c1.weight, c1.bias, c1.stride, c1.padding, c1.dilation, c1.groups)
        h1 = torch.tanh(a1)
        a2 = F.conv2d(h1, c2.weight, None, c2.stride, c2.padding, c2.dilation, c2.groups)
        g_flat = c @ _feedback_used(fc, rule)
        g2 = g_flat.view_as(a2)
        g1 = _conv_input_grad(g2, _feedback_used(c2, rule), c2, h1.shape) * (1 - h1.square())
    torch.testing.assert_close(fc.weight.grad, c.T @ a2.flatten(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(c2.weight.grad, _conv_weight_grad(h1, g2, c2), rtol=1e-10, atol=1e-12)
    assert c2.bias is None
    torch.testing.assert_close(c1.weight.grad, _conv_weight_grad(x, g1, c1), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(c1.bias.grad, g1.sum((0, 2, 3)), rtol=1e-10, atol=1e-12)
    if rule == "kp":
        assert torch.equal(c1.feedback.grad, c1.weight.grad)


@pytest.mark.parametrize("padding,mode",
                         [("same", "zeros"), (1, "reflect"), (1, "circular"), ("valid", "zeros")])
@pytest.mark.parametrize("rule", ["fa", "kp", "wm"])
def test_feedback_equal_to_weight_gives_backprop(rule, padding, mode):
    """With B set to W, every feedback rule must give backprop's gradients, whatever the padding."""
    ref = nn.Sequential(nn.Conv2d(2, 3, 4, padding=padding, padding_mode=mode), nn.Tanh(),
                        nn.Conv2d(3, 2, 3, stride=1 if padding == "same" else 2, dilation=2,
                                  padding=padding, padding_mode=mode)).double()
    model = nowt.convert(copy.deepcopy(ref), rule, seed=0)
    with torch.no_grad():
        for layer in model[0], model[2]:
            layer.feedback.copy_(layer.weight)
    x = torch.randn(2, 2, 9, 9, dtype=torch.double, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    ref(x).sin().sum().backward()
    model(x2).sin().sum().backward()
    torch.testing.assert_close(x2.grad, x.grad, rtol=1e-12, atol=1e-12)
    for p, q in zip(ref.parameters(), [model[0].weight, model[0].bias, model[2].weight, model[2].bias],
                    strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-12, atol=1e-12)


def test_usf_magnitude_is_best_scalar_for_sign():
    model = nowt.convert(tiny_mlp(), "usf")
    model(torch.randn(2, 5, dtype=torch.double)).sum().backward()
    w, b = model[2].weight.detach(), model[2].feedback
    c = b.abs().unique()
    assert len(c) == 1 and torch.isclose(c[0], w.abs().mean())
    assert torch.equal(torch.sign(b), torch.sign(w))


def test_frsf_magnitude_fixed_and_brsf_redrawn_each_batch():
    fixed = nowt.convert(tiny_mlp(), "frsf", seed=0)
    plain = tiny_mlp()
    batch = nowt.convert(copy.deepcopy(plain), "brsf", seed=0)
    seen = {"frsf": [], "brsf": []}
    for _ in range(3):
        for name, m in (("frsf", fixed), ("brsf", batch)):
            m(torch.randn(2, 5, dtype=torch.double)).sum().backward()
            seen[name].append(m[2].feedback.abs().clone())
    assert all(torch.equal(seen["frsf"][0], s) for s in seen["frsf"])
    assert not torch.equal(seen["brsf"][0], seen["brsf"][1])
    assert not torch.equal(seen["brsf"][1], seen["brsf"][2])
    # reproducible: same seed (and W, whose spread "match" draws at), same sequence of draws
    again = nowt.convert(copy.deepcopy(plain), "brsf", seed=0)
    again(torch.randn(2, 5, dtype=torch.double))
    assert torch.equal(again[2].feedback.abs(), seen["brsf"][0])


def test_fa_feedback_is_seeded_with_documented_distribution():
    def fa(seed, **options):
        torch.manual_seed(0)  # the same W each time
        return nowt.convert(nn.Sequential(nn.Linear(400, 300)), "fa", seed=seed, **options)[0]

    a, b, c = (fa(s, init="kaiming_uniform") for s in (3, 3, 4))
    assert torch.equal(a.feedback, b.feedback)
    assert not torch.equal(a.feedback, c.feedback)
    bound = 1 / 400**0.5  # nn.Linear's own init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    fb = a.feedback
    assert fb.abs().max() <= bound and fb.abs().max() > 0.99 * bound
    assert abs(float(fb.std()) - bound / 3**0.5) < 0.02 * bound
    scaled = fa(3, scale=2.0, init="kaiming_uniform")
    torch.testing.assert_close(scaled.feedback, 2 * fb)
    # the default, "match": the same draw rescaled to U(-sqrt(3) s, sqrt(3) s), s = std(W) at conversion
    matched = fa(3)
    s = float(matched.weight.std(correction=0))
    assert matched.rule.init == "match" and matched.feedback_std == s
    torch.testing.assert_close(matched.feedback, fb * (3**0.5 * s / bound))


def test_kp_feedback_converges_to_weight_under_weight_decay():
    """Same gradient and decay on W and B: W - B shrinks by exactly (1 - lr*wd) per SGD step."""
    model = nowt.convert(tiny_mlp(), "kp", seed=0)
    lr, wd, steps = 0.1, 0.05, 1000
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    layer = model[2]
    gap0 = (layer.weight - layer.feedback).detach().clone()
    start = nowt.weight_angles(model)
    for _ in range(steps):
        x = torch.randn(16, 5, dtype=torch.double)
        loss = (model(x) - x[:, :2].sin()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(layer.weight - layer.feedback, gap0 * (1 - lr * wd) ** steps)
    end = nowt.weight_angles(model)
    assert all(start[k] > 45 for k in start) and all(end[k] < 5 for k in end), (start, end)


def test_kp_feedback_is_a_parameter_in_model_parameters():
    model = nowt.convert(tiny_mlp(), "kp")
    params = {id(p) for p in model.parameters()}
    assert all(id(model[i].feedback) in params for i in (0, 2, 4))
    assert isinstance(model[0].feedback, nn.Parameter)



def test_kp_feedback_of_a_frozen_weight_stays_put():
    # B of a frozen W (requires_grad False) took W's would-be gradient and moved by 1.0 in 5 steps.
    model = nowt.convert(tiny_mlp(), "kp", seed=0)
    model[2].weight.requires_grad_(False)
    frozen_b, trained_b = model[2].feedback.detach().clone(), model[4].feedback.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 5, dtype=torch.double)).square().mean().backward()
        opt.step()
    assert model[2].feedback.grad is None and torch.equal(model[2].feedback, frozen_b)
    assert not torch.equal(model[4].feedback, trained_b)  # a trainable W's B still learns

@pytest.mark.parametrize("make,shape", [(lambda: nowt.models.mlp(784, (256, 256), 10), (64, 784)),
                                        (lambda: nowt.models.convnet(3, 10, 8, 16), (32, 3, 16, 16))])
def test_weight_mirror_aligns_within_a_few_hundred_steps_and_stays_bounded(make, shape):
    model = nowt.convert(make(), "wm", seed=0)
    model(torch.randn(shape))
    start = nowt.weight_angles(model)
    assert min(start.values()) > 60
    nowt.mirror(model, steps=300, generator=torch.Generator().manual_seed(0))
    aligned = nowt.weight_angles(model)
    assert max(aligned.values()) < 20, aligned
    nowt.mirror(model, steps=2000)  # long mirroring: B tracks W's scale, it does not grow
    for layer in nowt.feedback_layers(model).values():
        ratio = float(layer.feedback.norm() / layer.weight.norm())
        assert 0.8 < ratio < 1.3, ratio


@pytest.mark.parametrize("decay,activation", [(None, "none"), (None, "sigmoid"), (0.5, "none")])
def test_mirror_step_matches_hand_computation(decay, activation):
    """One mirror step on a Linear layer: B <- (1 - decay) B + lr * y^T x / (s^2 n), y the response to noise x
    of std s (decay None: decay = lr, the moving average, fused into the product's pass over B)."""
    model = nowt.convert(nn.Sequential(nn.Linear(6, 4)).double(), "wm", seed=0)
    model(torch.randn(5, 6, dtype=torch.double))
    layer, b0, s, lr = model[0], model[0].feedback.detach().clone(), 0.3, 0.2
    nowt.mirror(model, 1, lr=lr, decay=decay, noise_std=s, activation=activation, batch_size=7,
                generator=torch.Generator().manual_seed(1))
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.double) * s
    y = x @ layer.weight.detach().T
    if activation == "sigmoid":
        y = torch.sigmoid(y + layer.bias.detach())
    keep = 1 - (lr if decay is None else decay)
    torch.testing.assert_close(layer.feedback.detach(), keep * b0 + lr * y.T @ x / (s**2 * 7))


def test_mirror_errors():
    with pytest.raises(ValueError, match="no layer converted with rule 'wm'"):
        nowt.mirror(nowt.convert(tiny_mlp(), "fa"))
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        nowt.mirror(nowt.convert(tiny_mlp(), "wm"))
    model = nowt.convert(tiny_mlp(), "wm")
    model(torch.randn(4, 5, dtype=torch.double))
    with pytest.raises(ValueError, match="batch_size >= 1"):
        nowt.mirror(model, batch_size=0)


@pytest.mark.parametrize("init", ["kaiming_uniform", "xavier_uniform", "kaiming_normal"])
def test_brsf_magnitudes_follow_the_init_distribution(init):
    """|R| of a uniform init is U(0, bound) (65536 levels on the CPU); of a normal one, half-normal."""
    layer = nowt.convert(nn.Linear(300, 200), "brsf", seed=0, init=init)
    layer(torch.randn(1, 300))
    mag = layer.feedback.abs().flatten()
    ref = torch.empty(200, 300)
    getattr(nn.init, init + "_")(ref, **({"a": 5**0.5} if init == "kaiming_uniform" else {}))
    ref = ref.abs().flatten()
    for q in (0.1, 0.5, 0.9, 0.99):
        assert abs(float(mag.quantile(q) - ref.quantile(q))) < 0.03 * float(ref.max()), (q, init)
    assert mag.min() > 0


@pytest.mark.parametrize("rule", ["fa", "kp", "dfa", "bp"])
def test_a_linear_on_sequences_may_be_followed_by_an_in_place_activation(rule):
    """F.linear of a 3-d input is a view of its 2-d product: out of a custom Function it must still accept
    ReLU(inplace=True) (torchvision's Swin V2 has one), with the gradients of the out-of-place network."""
    grads = []
    for inplace in (False, True):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=inplace), nn.Linear(4, 3), nn.Flatten())
        model = nowt.convert(net, rule, seed=0)
        model(torch.randn(3, 5, 2)).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
    assert grads[0][0].abs().sum() > 0


def test_sign_rules_form_no_feedback_where_no_gradient_reaches_the_input():
    model = nowt.convert(nowt.models.mlp(6, (5,), 3), "brsf", seed=0)
    first, second = nowt.feedback_layers(model).values()
    x = torch.randn(4, 6)
    drawn = int(first.feedback_draws), int(second.feedback_draws)  # setup's draw
    with torch.no_grad():
        model(x)  # evaluation forms no B and draws nothing
    assert (int(first.feedback_draws), int(second.feedback_draws)) == drawn
    model(x).sum().backward()  # the first layer's input takes no gradient: its B is not drawn
    assert (int(first.feedback_draws), int(second.feedback_draws)) == (drawn[0], drawn[1] + 1)
    model = nowt.convert(nowt.models.mlp(6, (5,), 3), "usf", seed=0)
    first = next(iter(nowt.feedback_layers(model).values()))
    with torch.no_grad():
        first.weight.neg_()
    (name, (b, w)), *_ = first.rule.alignment_pairs(model).items()
    assert w is first.weight
    assert torch.equal(torch.sign(b), torch.sign(w))  # the angle reads W's current signs


@pytest.mark.parametrize("init", ["match", "kaiming_uniform"])
def test_brsf_cpu_magnitudes_are_the_randint_draws_of_their_seed_and_counter(init):
    layer = nowt.convert(tiny_mlp(), "brsf", seed=0, init=init)[2]
    rule = layer.rule
    w = layer.weight
    seed = int(layer.feedback_seed)
    for _ in range(2):
        draw = int(layer.feedback_draws)  # the counter before the call (setup drew once already)
        got = rule.magnitude(layer)
        g = torch.Generator().manual_seed(seed + 1_000_003 * draw)
        bits = torch.randint(-(2**63), 2**63 - 1, ((w.numel() + 3) // 4,), dtype=torch.int64, generator=g)
        levels = bits.view(torch.int16)[: w.numel()].view(w.shape).to(w.dtype)
        # kaiming_uniform's: 1 / sqrt(fan_in); match's: sqrt(3) std(W) at conversion
        bound = 1 / w.shape[1] ** 0.5 if init == "kaiming_uniform" else 3**0.5 * layer.feedback_std
        torch.testing.assert_close(got, (levels + 32768.5) * (bound / 65536), rtol=0, atol=0)


def test_mirror_noise_std_is_refused_where_the_normalised_linear_mirror_cancels_it():
    """Under the default linear response and normalised estimate, y x^T / (s^2 n) with y = W x divides s^2
    out: a noise std changes nothing, so setting one is refused (it was accepted and ignored). With a
    nonlinear response or the raw sum it is taken, and the paper's recipe (OFFICIAL_MIRROR) is such."""
    from nowt.reproduce.akrout2019 import OFFICIAL_MIRROR

    x = torch.randn(4, 5, dtype=torch.double)
    mirrored = []
    for s in (0.1, 3.0):  # what it would do: nothing, rounding aside
        torch.manual_seed(0)
        model = nowt.convert(tiny_mlp(), "wm", seed=0)
        model(x)
        nowt.mirror(model, 3, noise_std=s, generator=torch.Generator().manual_seed(0))
        mirrored.append([layer.feedback.clone() for layer in nowt.feedback_layers(model).values()])
    for a, b in zip(*mirrored, strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match=r"mirror_noise_std \(0.1\) has no effect: .*s cancels"):
        nowt.convert(tiny_mlp(), "wm", mirror_noise_std=0.1)
    for taken in (dict(mirror_activation="sigmoid"), dict(mirror_normalize=False), OFFICIAL_MIRROR):
        nowt.convert(tiny_mlp(), "wm", **{"mirror_noise_std": 0.1, **taken})
