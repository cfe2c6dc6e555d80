"""Weights that are matrices by use but not by shape: a vector or a single row or column (a readout
`h @ w`, an attention-pooling query, TAPAS's `einsum("bsj,j->bs", h, output_weights)`) multiplied as a
matrix sends errors through itself as an `nn.Linear` with one output would, and must be refused by name at
the first forward, not left on backprop as elementwise; and a subclass of a module kept on backprop by design
(an embedding, a norm) holding a matrix of its own is refused at convert."""

import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nowt


class Readout(nn.Module):
    """A hidden layer nowt converts, then a readout by a parameter that is no nn.Linear."""

    def __init__(self, shape, use):
        super().__init__()
        self.fc, self.w, self.use = nn.Linear(8, 16), nn.Parameter(torch.randn(shape)), use

    def forward(self, x):
        return self.use(torch.tanh(self.fc(x)), self.w)


READOUTS = {
    "column": ((16, 1), lambda h, w: h @ w),
    "vector": ((16,), lambda h, w: h @ w),
    "row": ((1, 16), lambda h, w: F.linear(h, w)),
    "einsum": ((16,), lambda h, w: torch.einsum("bj,j->b", h, w)),  # TAPAS's token logits
    "query": ((16,), lambda h, w: torch.softmax(h @ w.unsqueeze(-1), 0) * h),  # attention pooling
    # products spelled elementwise: the sum over w's dim makes them matrix products
    "product-sum": ((16,), lambda h, w: (h * w).sum(-1)),
    "product-mean": ((1, 16), lambda h, w: torch.mean(w * h, dim=(1,))),
    "dot": ((16,), lambda h, w: torch.stack([torch.dot(r, w) for r in h])),
}


@pytest.mark.parametrize("kind", list(READOUTS))
def test_a_vector_or_single_row_weight_multiplied_as_a_matrix_is_refused_at_the_first_forward(kind):
    x = torch.randn(4, 8)
    model = nowt.convert(Readout(*READOUTS[kind]), "fa", seed=0)
    with pytest.raises(ValueError, match=r"'w' \(a parameter of shape .* left on backprop as elementwise\) "
                                         r"is used by .*transport.*exclude=\['w'\]"):
        model(x)
    assert {r.name: r for r in nowt.summary(model, show=False)}[""].reads == "W (w)"
    with pytest.warns(UserWarning, match=r"'w'"):
        nowt.convert(Readout(*READOUTS[kind]), "fa", seed=0, unknown="warn")(x)
    # Why: on backprop (excluded, on purpose), the backward reads w to send the error on, as backprop reads W
    # (autograd saved it: changed between forward and backward, the backward cannot run).
    model = nowt.convert(Readout(*READOUTS[kind]), "fa", seed=0, exclude=["w"])
    loss = model(x).square().sum()
    with torch.no_grad():
        model.w.mul_(-3.0)
    with pytest.raises(RuntimeError, match="needed for gradient computation has been modified"):
        loss.backward()

class Elementwise(nn.Module):
    """Vectors used elementwise or added: a layer scale, a norm's gain, a bias, a scalar temperature."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(8, 8), nn.Linear(8, 2)
        self.gamma, self.gain = nn.Parameter(torch.ones(8)), nn.Parameter(torch.ones(1, 8))
        self.shift, self.temperature = nn.Parameter(torch.zeros(8)), nn.Parameter(torch.ones(()))
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        h = self.norm(x + self.gamma * torch.tanh(self.fc(x)))
        h = F.rms_norm(h, (8,)) * self.gain + self.shift
        return self.out(torch.einsum("bj,->bj", h, self.temperature))


def test_vectors_used_elementwise_stay_on_backprop_by_design():
    model = nowt.convert(Elementwise(), "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(4, 8)).sum().backward()
    rows = {r.name: r for r in nowt.summary(model, show=False)}
    assert rows[""].reads == "elementwise or added only" and rows["norm"].reads == "W, elementwise"


def test_tapas_readout_vectors_are_refused_by_name():
    transformers = pytest.importorskip("transformers")
    config = transformers.TapasConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=32, max_position_embeddings=16)
    ids, types = torch.randint(0, 32, (2, 6)), torch.zeros(2, 6, 7, dtype=torch.long)
    model = nowt.convert(transformers.TapasForQuestionAnswering(config), "fa", seed=0)
    with pytest.raises(ValueError, match=r"'output_weights' \(a parameter of shape \(16,\).*einsum"):
        model(input_ids=ids, token_type_ids=types)
    exclude = ["output_weights", "column_output_weights"]
    model = nowt.convert(transformers.TapasForQuestionAnswering(config), "fa", seed=0, exclude=exclude)
    model(input_ids=ids, token_type_ids=types).logits.sum().backward()


class ProjectedEmbedding(nn.Embedding):
    """A factorised embedding: small rows looked up, then multiplied by a matrix of the subclass's own."""

    def __init__(self):
        super().__init__(10, 4)
        self.proj = nn.Parameter(torch.randn(4, 8))

    def forward(self, ids):
        return super().forward(ids) @ self.proj


class MixedNorm(nn.LayerNorm):
    def __init__(self):
        super().__init__(8)
        self.mix = nn.Parameter(torch.randn(8, 8))

    def forward(self, x):
        return super().forward(x) @ self.mix


def test_a_subclass_of_a_module_kept_on_backprop_by_design_holding_a_matrix_is_refused():
    with pytest.raises(ValueError, match=r"ProjectedEmbedding at '0' \(weight 'proj', \(4, 8\)\)"):
        nowt.convert(nn.Sequential(ProjectedEmbedding(), nn.Linear(8, 2)), "fa")
    with pytest.raises(ValueError, match=r"MixedNorm at '1' \(weight 'mix', \(8, 8\)\)"):
        nowt.convert(nn.Sequential(nn.Linear(8, 8), MixedNorm()), "fa")
    model = nowt.convert(nn.Sequential(ProjectedEmbedding(), nn.Linear(8, 2)), "fa", seed=0,
                         exclude=["0.proj"])  # on backprop on purpose; the table is still looked up only
    model(torch.randint(0, 10, (2, 3))).sum().backward()
    assert {r.name: r for r in nowt.summary(model, show=False)}["0"].reads == "W (proj)"


def test_a_vector_product_pooled_over_other_dims_stays_elementwise():
    """A layer scale `gamma * h` averaged over tokens sums no product over gamma's own dim: accepted."""
    model = Readout((16,), lambda h, w: (w * h.unsqueeze(1).expand(-1, 3, -1)).mean(1))
    model = nowt.convert(model, "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(4, 8)).sum().backward()
    assert {r.name: r for r in nowt.summary(model, show=False)}[""].reads == "elementwise or added only"


class ScaledTwice(nn.Module):
    """A gain times activations, dropped inside the forward: the first forward's watch must not keep it."""

    def __init__(self):
        super().__init__()
        self.fc, self.gain = nn.Linear(8, 8), nn.Parameter(torch.ones(8))

    def forward(self, x):
        h = torch.tanh(self.fc(x))
        product = self.gain * h
        seen = weakref.ref(product)
        h = product + 1.0
        del product
        self.freed = seen() is None
        return h


def test_the_first_forwards_watch_holds_no_activation_sized_product():
    """Activation-sized products (a norm's gain times every token of every layer) were held until the first
    forward ended: memory a large model's first forward may not have."""
    model = nowt.convert(ScaledTwice(), "fa", seed=0)
    with torch.no_grad():
        model(torch.randn(4, 8))
    assert model.freed
