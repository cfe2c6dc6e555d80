"""DFA as Launay et al. 2020 ran it on transformers (`error_at=`): e is the loss's gradient at a module's
input (their feedback point before the vocabulary projection), what runs after it learns by backprop, and
every block before it, the last one too, gets B e. Hand computation, the options' errors, and passes that
register no block (no_grad, backprop_mode) under position_feedback='shared'."""

import copy

import pytest
import torch
from torch import nn

import nowt
from nowt.metrics import backprop_mode
from nowt.models import vit
from nowt.rules.dfa import storage as dfa_storage

D = torch.double


class TokenNet(nn.Module):
    """[N, T, 3] -> a Linear embedding, a block (Linear, tanh), a LayerNorm, the token mean, a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 4)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.Tanh())
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.norm(self.block(self.embed(x))).mean(1))


def _b(module: nn.Module, n_in: int, anchor: torch.Tensor) -> torch.Tensor:
    """A shared-position B: one (n_out=4, C) matrix, U(-1, 1) / sqrt(C)."""
    return dfa_storage.seeded(int(module.feedback_seed), torch.Size((4, n_in)), n_in**-0.5, 4096,
                              anchor).matrix(anchor)


@pytest.mark.parametrize("storage", ["dense", "seeded"])
def test_error_at_matches_hand_computation(storage):
    plain = TokenNet().double()
    model = nowt.convert(copy.deepcopy(plain), "dfa", seed=4, storage=storage, blocks=["block"],
                         position_feedback="shared", error_at="norm")
    x = torch.randn(5, 6, 3, dtype=D)
    t = torch.randn(5, 2, dtype=D)
    x_model = x.clone().requires_grad_()
    (0.5 * (model(x_model) - t).square().sum()).backward()
    # e: the true gradient at the norm's input (the block's output), per token, from the plain network,
    # whose norm and head grads are backprop's
    h = plain.block(plain.embed(x))
    h.retain_grad()
    (0.5 * (plain.head(plain.norm(h).mean(1)) - t).square().sum()).backward()
    e = h.grad.detach()  # (5, 6, 4): position t's own error
    inner = model.block[0]
    w = model.head.weight
    with torch.no_grad():
        h0 = model.embed(x)
        a = torch.tanh(h0 @ inner.weight.T + inner.bias)
        d = (e @ _b(model.block, 4, w)) * (1 - a**2)  # the block's output gets e_t @ B, the same B every t
        g_h0 = d @ inner.weight  # backprop inside the block, down to the embedding's output
    flat = lambda v: v.reshape(-1, v.shape[-1])  # noqa: E731
    for layer, delta, inp in [(inner, flat(d), flat(h0)), (model.embed, flat(g_h0), flat(x))]:
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), rtol=1e-10, atol=1e-12)
    # the first layer's input gets its own B e (DFA before the error point), never W_embed^T ...
    torch.testing.assert_close(x_model.grad, e @ _b(model.embed, 3, w), rtol=1e-10, atol=1e-12)
    # ... and what follows the error point (the norm, the head) gets exactly backprop's gradients
    for mine, true in [(model.norm.weight, plain.norm.weight), (model.norm.bias, plain.norm.bias),
                       (model.head.weight, plain.head.weight), (model.head.bias, plain.head.bias)]:
        torch.testing.assert_close(mine.grad, true.grad, rtol=1e-10, atol=1e-12)
    assert inner.rule.transports_weights  # e reaches the error point through the norm's and head's weights
    assert not hasattr(model.head, "feedback_shape")  # after the error point: no B


def test_error_at_feeds_the_last_block_and_refuses_bad_points():
    x = torch.randn(3, 1, 28, 28)
    torch.manual_seed(0)
    model = nowt.convert(vit(), "dfa", seed=0, blocks=["blocks.*"], position_feedback="shared",
                         error_at="head")
    model(x).logsumexp(1).sum().backward()
    for name in ("blocks.0", "blocks.1"):  # without error_at the last block would keep the true gradient
        assert tuple(model.get_submodule(name).feedback.shape) == (64, 64)  # n_out: the head's input
    with torch.no_grad():
        model(x)  # evaluation: no error point needed
    with pytest.raises(ValueError, match="error_at='nope' is no module of ViT"):
        nowt.convert(vit(), "dfa", seed=0, error_at="nope")
    with pytest.raises(ValueError, match="error_at and output both say where e is taken"):
        nowt.convert(vit(), "dfa", seed=0, error_at="head", output=0)
    inside = nowt.convert(vit(), "dfa", seed=0, blocks=["blocks.*"], error_at="blocks.1.linear2")
    with pytest.raises(ValueError, match=r"runs inside block\(s\) \['blocks.1'\]"):
        inside(x)


def test_shared_positions_accept_passes_that_register_no_block():
    """A forward under no_grad or backprop_mode registers no block; it is not a model without sequences."""
    x = torch.randn(2, 1, 28, 28)
    for first in ("no_grad", "backprop_mode", "train"):
        model = nowt.convert(vit(), "dfa", seed=0, blocks=["blocks.*"], position_feedback="shared")
        if first == "no_grad":
            with torch.no_grad():
                model(x)
        elif first == "backprop_mode":
            with backprop_mode(model):
                model(x).sum().backward()
        model(x).sum().backward()
        with torch.no_grad():
            model(x)
        assert tuple(model.blocks[0].feedback.shape) == (10, 64)


def test_mean_pooled_vit_has_no_cls_token():
    model = vit(pool="mean")
    assert model.pos.shape == (1, 16, 64) and model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
