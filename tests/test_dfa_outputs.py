"""DFA on any output and any length: picking the output tensor (`output=`, dicts, ModelOutput-like objects,
tuples), tuple-returning blocks, per-token errors for sequence outputs [N, T, V] (by hand), variable lengths
and cross-attention."""

import collections

import pytest
import torch
from conftest import half_square_error
from torch import nn

import nowt

D = torch.double


def stack() -> nn.Sequential:
    """A per-position Linear stack on [N, T, C] inputs: [N, T, 3] -> [N, T, 2]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


@pytest.mark.parametrize("storage,chunk", [("dense", 4096), ("seeded", 5), ("shared", 8)])
@pytest.mark.parametrize("positions", ["full", "shared"])
def test_per_token_dfa_matches_hand_computation(storage, chunk, positions):
    """Position t's activations get its own error e_t through B_t = B[:, t] (full: B is (V, T, C)) or one
    B (V, C) for every t (shared), never the other positions' errors."""
    model = nowt.convert(stack(), "dfa", seed=1, storage=storage, chunk=chunk, position_feedback=positions)
    l0, l2 = model[0], model[2]
    n, t = 5, 6
    x = torch.randn(n, t, 3, dtype=D, requires_grad=True)
    e = half_square_error(model, x, torch.randn(n, t, 2, dtype=D))  # (N, T, V)
    b0, b2 = l0.feedback.detach(), l2.feedback.detach()
    if positions == "full":
        assert b0.shape == (2, t, 3) and b2.shape == (2, t, 4)
        per_t = lambda b: torch.stack([e[:, p] @ b[:, p] for p in range(t)], 1)  # noqa: E731
    else:
        assert b0.shape == (2, 3) and b2.shape == (2, 4)
        per_t = lambda b: torch.stack([e[:, p] @ b for p in range(t)], 1)  # noqa: E731
    with torch.no_grad():
        h = torch.tanh(x @ l0.weight.T + l0.bias)
        d = per_t(b2) * (1 - h**2)  # the hidden layer's output: its position's e_t through B_t, then tanh'
    flat = lambda z: z.reshape(-1, z.shape[-1])  # noqa: E731
    torch.testing.assert_close(x.grad, per_t(b0), rtol=1e-10, atol=1e-12)  # the hidden layer's input
    for layer, delta, inp in [(l2, e, h), (l0, d, x.detach())]:
        torch.testing.assert_close(layer.weight.grad, flat(delta).T @ flat(inp), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, flat(delta).sum(0), rtol=1e-10, atol=1e-12)


class Memory(nn.Module):
    """Queries [N, T, 3] and a memory [N, S, 3]: head(tanh(q(x)) + mean_s(m(mem)))."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.m, self.head = nn.Linear(3, 4), nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x, mem):
        return self.head(torch.tanh(self.q(x)) + self.m(mem).mean(1, keepdim=True))


@pytest.mark.parametrize("positions", ["full", "shared"])
def test_positions_that_are_not_the_outputs_get_the_error_summed_over_them(positions):
    model = nowt.convert(Memory().double(), "dfa", seed=0, position_feedback=positions)
    x, mem = torch.randn(3, 4, 3, dtype=D), torch.randn(3, 6, 3, dtype=D, requires_grad=True)
    y = model(x, mem)
    t = torch.randn_like(y)
    (0.5 * (y - t).square().sum()).backward()
    e = (y - t).detach().sum(1)  # (N, V): the memory's 6 positions are not the output's 4
    b = model.m.feedback.detach()
    want = (e @ b)[:, None].expand(3, 6, 3) if positions == "shared" else (e @ b.flatten(1)).view(3, 6, 3)
    torch.testing.assert_close(mem.grad, want, rtol=1e-10, atol=1e-12)


class Seq2Seq(nn.Module):
    """An embedding, one decoder layer (self- and cross-attention), a readout to 5 tokens per position."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, 8)
        self.dec = nn.TransformerDecoderLayer(8, 2, 16, 0.0, batch_first=True)
        self.head = nn.Linear(8, 5)

    def forward(self, tgt, mem):
        return self.head(self.dec(self.embed(tgt), self.embed(mem)))


@pytest.mark.parametrize("blocks", [(), ("dec",)])
def test_variable_lengths_and_cross_attention_with_shared_position_feedback(blocks):
    model = nowt.convert(Seq2Seq(), "dfa", seed=0, position_feedback="shared", blocks=blocks)
    for t, s in [(4, 6), (3, 7), (5, 5)]:  # query and memory lengths differ, and change between batches
        model.zero_grad()
        out = model(torch.randn(2, t, 3), torch.randn(2, s, 3))
        assert out.shape == (2, t, 5)
        out.square().sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.embed.feedback.shape == (5, 3)  # one (V, C) B whatever the length
    full = nowt.convert(Seq2Seq(), "dfa", seed=0)
    full(torch.randn(2, 4, 3), torch.randn(2, 4, 3)).sum().backward()
    with pytest.raises(ValueError, match=r"fixed at the first.*length varies.*position_feedback='shared'"):
        full(torch.randn(2, 3, 3), torch.randn(2, 3, 3))


class Out(dict):
    """A stand-in for a Hugging Face ModelOutput: a dict whose entries are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Returns(nn.Module):
    """stack()'s layers on [N, 3], returning its logits wrapped as `wrap(logits, hidden)` says."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.net, self.wrap = stack(), wrap

    def forward(self, x):
        hidden = torch.tanh(self.net[0](x))
        return self.wrap(self.net[2](hidden), hidden)


Pair = collections.namedtuple("Pair", "hidden logits")


class Attrs:
    def __init__(self, logits, hidden):
        self.logits, self.hidden = logits, hidden


CASES = [  # (how the model wraps its logits, output=, how the loss reads them)
    (lambda y, h: Out(logits=y, hidden=h), None, lambda o: o.logits),  # a ModelOutput: "logits"
    (lambda y, h: Out(logits=y, hidden=h), None, lambda o: o["logits"]),
    (lambda y, h: {"scores": y, "loss": y.sum()}, None, lambda o: o["scores"]),  # the one tensor of dim >= 2
    (lambda y, h: (y.sum(), y, (h, h)), None, lambda o: o[1]),  # HF's tuple: loss, logits, hidden states
    (lambda y, h: Attrs(y, h), None, lambda o: o.logits),
    (lambda y, h: {"scores": y, "feats": h}, "scores", lambda o: o["scores"]),
    (lambda y, h: Attrs(y, h), "logits", lambda o: o.logits),
    (lambda y, h: (h, y), 1, lambda o: o[1]),
    (lambda y, h: Pair(h, y), "logits", lambda o: o.logits),
    (lambda y, h: {"a": [h, {"b": y}]}, lambda o: o["a"][1]["b"], lambda o: o["a"][1]["b"]),  # nested
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_outputs_pick_the_logits_and_give_the_tensor_models_gradients(case):
    wrap, spec, read = CASES[case]
    x, target = torch.randn(4, 3, dtype=D), torch.randn(4, 2, dtype=D)
    plain = nowt.convert(Returns(lambda y, h: y), "dfa", seed=0)
    (plain(x) - target).square().sum().backward()
    model = nowt.convert(Returns(wrap), "dfa", seed=0, output=spec)
    (read(model(x)) - target).square().sum().backward()
    for a, b in zip(model.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_outputs_that_name_no_single_tensor_are_refused():
    def refused(wrap, spec, match):
        with pytest.raises(ValueError, match=match):
            nowt.convert(Returns(wrap), "dfa", output=spec)(torch.randn(2, 3, dtype=D))

    refused(lambda y, h: {"scores": y, "feats": h}, None, r"dict with keys \['scores', 'feats'\], not one "
            r"\[N, n_out\].*output=")
    refused(lambda y, h: (y, h), None, "returned tuple, not one")
    with torch.no_grad():  # evaluation takes no e: what the model returns is its own business
        assert len(nowt.convert(Returns(lambda y, h: (y, h)), "dfa")(torch.randn(2, 3, dtype=D))) == 2
    refused(lambda y, h: Out(logits=y), "scores", r"output='scores' is not in the model's output, Out with")
    refused(lambda y, h: y, lambda o: o * 2, "output= must return one of the tensors the model returned")
    refused(lambda y, h: {"y": y, "n": 3}, "n", "output='n' picks int, not a tensor")
    with pytest.raises(ValueError, match="output must be a key, an attribute name, an index or a callable"):
        nowt.make_rule("dfa", output=2.5)


class TupleBlock(nn.Module):
    """A Hugging Face style layer: (hidden state, something else)."""

    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        self.lin, self.tuple_out = nn.Linear(4, 4), tuple_out

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return (h, h.detach().mean()) if self.tuple_out else h


class TupleNet(nn.Module):
    def __init__(self, tuple_out: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.block, self.head = nn.Linear(3, 4), TupleBlock(tuple_out), nn.Linear(4, 2)

    def forward(self, x):
        out = self.block(self.embed(x))
        return self.head(out[0] if isinstance(out, tuple) else out)


def test_a_block_returning_a_tuple_gets_b_e_at_its_hidden_state():
    x = torch.randn(5, 3, dtype=D)
    grads = []
    for tuple_out in (False, True):
        model = nowt.convert(TupleNet(tuple_out).double(), "dfa", seed=0, blocks=["block"])
        model(x).square().sum().backward()
        grads.append([p.grad for p in model.parameters()])
        assert model.block.feedback.shape == (2, 4)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_shared_b_saved_with_its_positions_in_its_shape_still_loads():
    """Before shared B's shape was kept as (V, C) it was kept as (V, T, C): such a state loads and runs, at
    any length."""
    model = nowt.convert(Seq2Seq(), "dfa", seed=0, position_feedback="shared")
    model(torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    state = model.state_dict()
    state["embed.feedback_shape"] = torch.tensor([5, 4, 3])
    fresh = nowt.convert(Seq2Seq(), "dfa", seed=1, position_feedback="shared")
    fresh.load_state_dict(state)
    fresh(torch.randn(2, 6, 3), torch.randn(2, 5, 3)).sum().backward()
    assert torch.equal(fresh.embed.feedback, model.embed.feedback)
    assert fresh.embed.feedback_shape.tolist() == [5, 3]
