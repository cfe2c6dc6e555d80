"""Block-level DFA (`blocks=`): hand computation, no transport across blocks, a ViT's blocks against autograd,
the true gradient for diagnostics, state, storages, errors and `nowt train`."""

import copy

import pytest
import torch
from conftest import half_square_error
from torch import nn

import nowt
from nowt.models import vit
from nowt.rules.dfa import storage as dfa_storage

D = torch.double


def block_mlp() -> nn.Sequential:
    """Linear, then a block of Linear-tanh-Linear, then tanh and a readout."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 4))
    return nn.Sequential(nn.Linear(3, 4), block, nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("storage", ["dense", "seeded"])
def test_block_mlp_matches_hand_computation(storage):
    model = nowt.convert(block_mlp(), "dfa", seed=3, storage=storage, chunk=3, blocks=["1"])
    l0, (l1, l2), l3 = model[0], (model[1][0], model[1][2]), model[3]
    x = torch.randn(6, 3, dtype=D)
    e = half_square_error(model, x, torch.randn(6, 2, dtype=D))
    b_block = dfa_storage.seeded(int(model[1].feedback_seed), torch.Size((2, 4)), 1 / 2, 3,
                                 l0.weight).matrix(l0.weight)  # U(-1, 1) / sqrt(4), as a layer's
    with torch.no_grad():
        h0 = x @ l0.weight.T + l0.bias
        h1 = torch.tanh(h0 @ l1.weight.T + l1.bias)
        a = h1 @ l2.weight.T + l2.bias
        g_a = e @ b_block  # the block's output gets B e, not W3^T e * tanh'(a)
        d1 = (g_a @ l2.weight) * (1 - h1**2)  # backprop inside the block
        g_h0 = d1 @ l1.weight  # ... down to the block's input, the output of the DFA layer before it
    for layer, delta, inp in [(l3, e, torch.tanh(a)), (l2, g_a, h1), (l1, d1, h0), (l0, g_h0, x)]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), rtol=1e-10, atol=1e-12)
    assert model[1].feedback_seed == l1.feedback_seed  # a block is seeded by its first converted layer
    if storage == "dense":
        torch.testing.assert_close(model[1].feedback, b_block)
    assert all(hasattr(m, "feedback_shape") for m in (l0, model[1], l3))
    assert not hasattr(l1, "feedback_shape") and not hasattr(l2, "feedback_shape")  # no B inside a block


def test_upstream_updates_do_not_depend_on_weights_after_the_block():
    x = torch.randn(6, 3, dtype=D)

    def upstream(tamper: bool, blocks):
        model = nowt.convert(block_mlp(), "dfa", seed=0, blocks=blocks)
        out = model(x)
        if tamper:
            model[3].weight.data.mul_(-3.0).add_(1.0)  # after the block: changed between forward and backward
        out.square().sum().backward()
        return [p.grad.clone() for p in [*model[0].parameters(), *model[1].parameters()]]

    for blocks in (["1"], []):
        clean, tampered = upstream(False, blocks), upstream(True, blocks)
        assert all(torch.equal(a, b) for a, b in zip(clean, tampered, strict=True))
    plain = block_mlp()
    plain(x).square().sum().backward()
    assert not torch.equal(plain[0].weight.grad, upstream(False, ["1"])[0])  # not backprop's gradient
    assert nowt.make_rule("dfa", blocks=["1"]).transports_weights  # inside a block it is backprop
    assert not nowt.make_rule("dfa").transports_weights


def test_vit_blocks_get_autograd_gradients_of_their_projected_error():
    torch.manual_seed(0)
    plain = vit(depth=2).double()
    model = nowt.convert(copy.deepcopy(plain), "dfa", seed=0, blocks=["blocks.*"])
    x, r = torch.randn(4, 1, 28, 28, dtype=D), torch.randn(4, 10, dtype=D)
    (model(x) * r).sum().backward()  # so e = r
    inputs = {}
    plain.blocks[1].register_forward_pre_hook(lambda m, args: inputs.setdefault("x", args[0]))
    plain(x)
    block = plain.blocks[1]
    grad_out = (r @ model.blocks[1].feedback.flatten(1)).view(4, 17, 64)
    expected = torch.autograd.grad(block(inputs["x"]), list(block.parameters()), grad_out)
    got = [p.grad for p in model.blocks[1].parameters()]
    assert len(got) == len(expected) > 4
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    names = [n for n, _ in model.named_buffers() if n.endswith(".feedback")]
    assert names == ["embed.feedback", "blocks.0.feedback", "blocks.1.feedback", "head.feedback"]


def test_backprop_mode_gives_autograd_gradients_through_blocks():
    x = torch.randn(6, 3, dtype=D)
    plain = block_mlp()
    plain(x).square().sum().backward()
    model = nowt.convert(block_mlp(), "dfa", seed=0, blocks=["1"])
    with nowt.metrics.backprop_mode(model):
        model(x).square().sum().backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


class TokenNet(nn.Module):
    """(N, T, 3) tokens: an embedding, a block of Linear-tanh, mean over tokens, a readout."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    def forward(self, x):
        return self.head(self.block(self.embed(x)).mean(1))


@pytest.mark.parametrize("storage", ["dense", "seeded"])
def test_shared_position_feedback_matches_hand_computation(storage):
    model = nowt.convert(TokenNet().double(), "dfa", seed=2, storage=storage, blocks=["block"],
                         position_feedback="shared")
    x = torch.randn(5, 6, 3, dtype=D, requires_grad=True)
    e = half_square_error(model, x, torch.randn(5, 2, dtype=D))

    def b(module, n_in):  # one (n_out, C) matrix, U(-1, 1) / sqrt(C), whatever the number of positions
        w = model.head.weight
        return dfa_storage.seeded(int(module.feedback_seed), torch.Size((2, n_in)), n_in**-0.5, 4096,
                                  w).matrix(w)

    inner = model.block[0]
    with torch.no_grad():
        h0 = model.embed(x)
        h = torch.tanh(h0 @ inner.weight.T + inner.bias)
        d = (e @ b(model.block, 4))[:, None, :] * (1 - h**2)  # every token's output gets the same e @ B
        g_h0 = d @ inner.weight
    flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
    for layer, delta, inp in [(model.head, e, h.mean(1)), (inner, flat(d), flat(h0)),
                              (model.embed, flat(g_h0), flat(x.detach()))]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x.grad, (e @ b(model.embed, 3))[:, None, :].expand(5, 6, 3), rtol=1e-10,
                               atol=1e-12)
    if storage == "dense":
        assert model.block.feedback.shape == (2, 4) and model.embed.feedback.shape == (2, 3)


def test_shared_position_feedback_leaves_convolutions_full_and_refuses_unknown_values():
    model = nowt.convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(2), nn.Linear(4 * 4, 5), nn.Flatten(),
                                       nn.Linear(2 * 5, 3)), "dfa", seed=0, position_feedback="shared")
    model(torch.randn(2, 1, 6, 6)).sum().backward()  # the (N, 2, 16) input of model[2] is a sequence
    assert model[0].feedback.shape == (3, 1, 6, 6) and model[4].feedback.shape == (3, 10)
    assert model[2].feedback.shape == (3, 16)
    with pytest.raises(ValueError, match="unknown position_feedback 'tokens'; choose full or shared"):
        nowt.make_rule("dfa", position_feedback="tokens")


def test_state_dict_deepcopy_and_inplace_after_a_block():
    x = torch.randn(6, 3, dtype=D)
    model = nowt.convert(block_mlp(), "dfa", seed=0, blocks=["1"])
    model(x)
    fresh = nowt.convert(block_mlp(), "dfa", seed=5, blocks=["1"])
    fresh.load_state_dict(model.state_dict())
    twin = copy.deepcopy(model)
    for m in (model, fresh, twin):
        m.zero_grad()
        m(x).square().sum().backward()
    for m in (fresh, twin):
        torch.testing.assert_close(m[1].feedback, model[1].feedback, rtol=0, atol=0)
        for a, b in zip(m.parameters(), model.parameters(), strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    relu_after = nowt.convert(nn.Sequential(nn.Sequential(nn.Linear(3, 4)), nn.ReLU(inplace=True),
                                            nn.Linear(4, 2)).double(), "dfa", seed=0, blocks=["0"])
    relu_after(x).sum().backward()
    assert relu_after[0][0].weight.grad.abs().sum() > 0


def test_clear_errors():
    with pytest.raises(ValueError, match="match.*no module.*module names"):
        nowt.convert(block_mlp(), "dfa", blocks=["encoder.*"])
    with pytest.raises(ValueError, match="block '2' holds no layer converted by dfa"):
        nowt.convert(block_mlp(), "dfa", blocks=["2"])
    with pytest.raises(ValueError, match="list of module names"):
        nowt.convert(block_mlp(), "dfa", blocks="1")
    with pytest.raises(ValueError, match=r"rule 'ifa' got unknown option\(s\) \['blocks'\]"):
        nowt.convert(block_mlp(), "ifa", blocks=["1"])

    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return {"a": self.a(x), "b": self.b(x)}  # a tuple's first entry would be its hidden state

    class TwoOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            out = self.pair(x)
            return out["a"] + out["b"]

    model = nowt.convert(TwoOut(), "dfa", blocks=["pair"])
    with pytest.raises(ValueError, match="block 'pair' must return a tensor.*got dict"):
        model(torch.randn(2, 3))
    block = nowt.convert(block_mlp(), "dfa", blocks=["1"])[1]
    with pytest.raises(RuntimeError, match="outside its converted model's forward"):
        block(torch.randn(2, 4, dtype=D)).sum().backward()


def test_nowt_train_vit_with_blocks(tmp_path, capsys):
    import json

    from nowt.cli import main

    common = ["--model", "vit", "--epochs", "1", "--train-size", "128", "--blocks", "blocks.*",
              "--no-progress"]
    assert main(["train", "--rule", "dfa", *common, "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["blocks"] == ["blocks.*"]
    assert main(["train", "--rule", "fa", *common, "--out", str(tmp_path / "fa")]) == 2
    assert "--blocks applies only to: dfa" in capsys.readouterr().err


def test_compiled_vit_with_blocks_has_the_eager_gradients():
    torch._dynamo.reset()
    base = nowt.convert(vit(1, 10, image_size=8, patch=4, dim=8, depth=1, heads=2), "dfa", seed=0,
                        blocks=["blocks.*"], position_feedback="shared")
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    run = torch.compile(compiled, backend="aot_eager")
    x = torch.randn(4, 1, 8, 8)
    eager(x).square().sum().backward()
    run(x).square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_resnet_residual_blocks_take_block_feedback():
    torch.manual_seed(0)
    model = nowt.convert(nowt.models.create_model("resnet20", in_channels=3, num_classes=10), "dfa", seed=0,
                         blocks=["layer*.*"])
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    fed = sorted(n.rsplit(".", 1)[0] for n, _ in model.named_buffers() if n.endswith(".feedback"))
    assert fed == ["conv1", "fc", *(f"layer{i}.{j}" for i in (1, 2, 3) for j in (0, 1, 2))]  # 9 blocks
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_block_after_which_no_layer_runs_keeps_the_true_gradient():
    """The issue's model: the output layer sits in block "1", which gets e itself, as per-layer DFA's output
    layer does (B e there gave a cosine of 0.46 to the true gradient); layer 0's input still gets its B e."""
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU()),
                             nn.Sequential(nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 4))).double()

    model, plain = nowt.convert(make(), "dfa", seed=0, blocks=["1"]), make()
    x, t = torch.randn(7, 6, dtype=D, requires_grad=True), torch.randn(7, 4, dtype=D)
    e = half_square_error(model, x, t)
    half_square_error(plain, x.detach(), t)
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14)  # nothing converted downstream
    torch.testing.assert_close(x.grad, e @ model[0][0].feedback, rtol=1e-12, atol=1e-14)
    assert not hasattr(model[1], "feedback") and not hasattr(model[1], "feedback_shape")


def test_a_block_that_is_one_layer_gets_b_e_at_its_output():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    model = nowt.convert(plain, "dfa", seed=1, blocks=["2"])
    l0, l2, l4 = model[0], model[2], model[4]
    x = torch.randn(6, 3, dtype=D)
    e = half_square_error(model, x, torch.randn(6, 2, dtype=D))
    with torch.no_grad():
        h0 = torch.tanh(l0(x))
        a2 = l2(h0)
        g_a2 = e @ l2.feedback  # B (2, 4) at the block's (the layer's) output
        d0 = (g_a2 @ l2.weight) * (1 - h0**2)  # its input: backprop through its own W, as inside any block
    assert l2.feedback.shape == (2, 4)
    for layer, delta, inp in [(l4, e, torch.tanh(a2)), (l2, g_a2, h0), (l0, d0, x)]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp, rtol=1e-10, atol=1e-12)
    vit_head = nowt.convert(vit(depth=1), "dfa", seed=0, blocks=["head"])  # was an AttributeError
    vit_head(torch.randn(2, 1, 28, 28)).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in vit_head.parameters())


def test_a_block_that_never_runs_is_refused():
    with pytest.raises(ValueError, match=r"block 'blocks' is a ModuleList.*never calls.*'blocks\.\*'"):
        nowt.convert(vit(depth=1), "dfa", blocks=["blocks"])

    class Parts(nn.Module):  # a holder whose parts the model calls one by one
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.parts, self.head = Parts(), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.parts.b(self.parts.a(x).relu()))

    model = nowt.convert(Net(), "dfa", blocks=["parts"])
    with pytest.raises(ValueError, match="layer 'parts.a' of block 'parts' ran while that block was not "
                                         "running.*plain backprop"):
        model(torch.randn(2, 3))
    with torch.no_grad():
        model(torch.randn(2, 3))  # evaluation trains nothing: no error
