"""nowt.convert refuses weight transport it would otherwise leave behind silently: a converted layer's weight
used outside the layer (a tied decoder), an embedding table multiplied as a matrix (a tied LM head), a weight
matrix taken as added by its name or shape; and `exclude` by parameter name leaves the layer on backprop."""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_mlp
from torch import nn

import nowt
from nowt.inventory import is_matrix, looks_additive


class TiedAutoencoder(nn.Module):
    """The decoder is the encoder's weight transposed: backprop through it would be weight transport."""

    def __init__(self):
        super().__init__()
        self.pre, self.enc = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(torch.tanh(self.pre(x)))), self.enc.weight.t())


def test_a_converted_weight_used_outside_its_layer_is_refused_at_the_first_forward():
    x = torch.randn(16, 8)
    model = nowt.convert(TiedAutoencoder(), "fa", seed=0)
    with pytest.raises(ValueError, match=r"'enc\.weight' \(the weight of converted layer 'enc'\) is used "
                                         r"by torch\.nn\.functional\.linear.*transport.*exclude=\['enc'\]"):
        model(x)
    with torch.no_grad(), pytest.raises(ValueError, match=r"'enc\.weight'"):  # an evaluation forward too
        nowt.convert(TiedAutoencoder(), "fa", seed=0)(x)
    with pytest.warns(UserWarning, match=r"'enc\.weight'"):
        nowt.convert(TiedAutoencoder(), "fa", seed=0, unknown="warn")(x)
    model = nowt.convert(TiedAutoencoder(), "fa", seed=0, exclude=["enc"])  # on backprop, on purpose
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(x).square().sum().backward()
    assert model.enc.rule == "bp" and model.pre.rule == "fa"


class TiedLM(nn.Module):
    """A language model whose head multiplies by the token embedding's table (`F.linear(h, emb.weight)`), or,
    with `linear_head`, an nn.Linear sharing that table, as GPT-2's lm_head does."""

    def __init__(self, linear_head: bool = False):
        super().__init__()
        self.emb, self.body = nn.Embedding(10, 8), nn.Linear(8, 8)
        self.pos = nn.Parameter(torch.zeros(1, 3, 8))  # added: accepted
        self.head = None
        if linear_head:
            self.head = nn.Linear(8, 10, bias=False)
            self.head.weight = self.emb.weight

    def forward(self, ids):
        h = torch.tanh(self.body(self.emb(ids) + self.pos[:, : ids.shape[1]]))
        return self.head(h) if self.head is not None else h @ self.emb.weight.T


class SpelledDecoder(TiedAutoencoder):
    """The tied decoder spelled without a matrix op: a broadcast product then a sum, or a masked weight."""

    def __init__(self, masked: bool):
        super().__init__()
        self.masked = masked
        self.register_buffer("mask", torch.ones(4, 8))

    def forward(self, x):
        h = torch.tanh(self.enc(torch.tanh(self.pre(x))))
        if self.masked:
            return F.linear(h, (self.enc.weight * self.mask).t())
        return (h.unsqueeze(-1) * self.enc.weight).sum(1)


@pytest.mark.parametrize("masked", [False, True])
def test_a_converted_weight_used_elementwise_as_a_matrix_outside_its_layer_is_refused(masked):
    use = r"is used by torch\.(Tensor\.sum of an elementwise product|nn\.functional\.linear)"
    with pytest.raises(ValueError, match=r"'enc\.weight' \(the weight of converted layer 'enc'\) " + use):
        nowt.convert(SpelledDecoder(masked), "fa", seed=0)(torch.randn(3, 8))


def test_kp_warns_where_a_weight_is_shared_with_a_module_it_does_not_train():
    """GPT-2's lm_head shares its weight with the token embedding: W gets the embedding's gradient too, B
    never does, so kp's B cannot converge to W. That was silent; convert now says so (kp alone: fa's fixed B
    and the others do not learn from W's gradient). A converted attention's own weights are no such case."""
    with pytest.warns(UserWarning, match=r"kp: 'head' shares its weight with 'emb\.weight' \(Embedding\).*"
                                         r"B will not converge to W"):
        nowt.convert(TiedLM(linear_head=True), "kp", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nowt.convert(TiedLM(linear_head=True), "fa", seed=0)
        nowt.convert(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), "kp", seed=0)
        nowt.convert(TiedLM(linear_head=True), "kp", seed=0, exclude=["head"])
        # a weight-normed layer's parametrization holds its own W's parts: no sharing (it was warned of)
        nowt.convert(nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(4, 3)), nn.Tanh()), "kp",
                     seed=0)


def test_an_embedding_table_used_as_a_matrix_is_refused_and_a_tied_linear_head_is_not():
    ids = torch.randint(0, 10, (4, 3))
    with pytest.raises(ValueError, match=r"'emb\.weight' \(the table of embedding 'emb'\) is used by "
                                         r"torch\.Tensor\.matmul.*exclude=\['emb'\]"):
        nowt.convert(TiedLM(), "fa", seed=0)(ids)
    model = nowt.convert(TiedLM(), "fa", seed=0, unknown="warn")
    with pytest.warns(UserWarning, match=r"'emb\.weight'"):
        model(ids)
    assert {r.name: r for r in nowt.summary(model, show=False)}["emb"].reads == "W (weight)"
    tied = nowt.convert(TiedLM(linear_head=True), "fa", seed=0)  # the lookup of a converted weight: no error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tied(ids).sum().backward()
    assert tied.head.rule == "fa" and tied.emb.weight.grad is not None
    assert {r.name: r for r in nowt.summary(tied, show=False)}["emb"].reads == "nothing: a lookup"


class Named(nn.Module):
    """Square matrices whose names hold 'pos' and 'transpose' but no whole word of an added parameter."""

    def __init__(self):
        super().__init__()
        self.w_transposed = nn.Parameter(torch.randn(16, 16))
        self.decomposition = nn.Parameter(torch.randn(16, 16))

    def forward(self, x):
        return x @ self.w_transposed @ self.decomposition


class Leading(nn.Module):
    """A (1, 16, 16) matrix: shaped like a position embedding, used as a matrix."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(1, 16, 16))

    def forward(self, x):
        return x @ self.w[0]


def test_matrices_named_or_shaped_like_added_parameters_are_refused_by_name():
    with pytest.raises(ValueError, match=r"Named at '1' \(weight 'w_transposed'.*Named at '1' \(weight "
                                         r"'decomposition'"):
        nowt.convert(nn.Sequential(nn.Linear(16, 16), Named()), "fa")
    model = nowt.convert(nn.Sequential(nn.Linear(16, 16), Leading()), "fa", seed=0)  # taken as added until
    with pytest.raises(ValueError, match=r"'1\.w' \(taken as added, by its name or shape\) is used by "
                                         r"torch\.Tensor\.matmul.*exclude=\['1\.w'\]"):
        model(torch.randn(2, 16))  # the first forward shows it multiplied
    assert {r.name: r for r in nowt.summary(model, show=False)}["1"].reads == "W (w)"
    nowt.convert(nn.Sequential(nn.Linear(16, 16), Leading()), "fa", exclude=["1.w"])(torch.randn(2, 16))
    for name in ("w_transposed", "decomposition", "temporal", "compose"):
        assert is_matrix(name, torch.zeros(4, 4)) and not looks_additive(name, torch.zeros(4, 4)), name
    for name in ("pos_embed", "cls_token", "relative_position_bias_table", "posEmbed", "latents",
                 "position_embeddings", "class_embedding", "query_tokens"):
        assert looks_additive(name, torch.zeros(4, 4)) and not is_matrix(name, torch.zeros(4, 4)), name


class Harmless(nn.Module):
    """Uses of weights and added parameters that send no error through them: dtype and shape reads, casts
    to a weight's dtype, a class token and position embedding added, a table looked up by index."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 4), nn.Linear(4, 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 4))
        self.bias_table = nn.Parameter(torch.zeros(7, 4))

    def forward(self, x):
        x = x.to(self.fc.weight.dtype).type_as(self.fc.weight)[..., : self.fc.weight.shape[1]]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = self.fc(x) + self.bias_table[torch.arange(4) % 7]
        return self.out(torch.softmax(x @ x.transpose(1, 2), -1) @ x)


def test_uses_that_send_no_error_through_a_weight_are_accepted():
    model = nowt.convert(Harmless(), "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 3, 4)).sum().backward()
        model(torch.randn(2, 3, 4)).sum().backward()
    assert not model._forward_hooks and not model._forward_pre_hooks  # the check is one-shot
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in nowt.feedback_layers(model).values())


def test_exclude_by_parameter_name_leaves_the_layer_that_holds_it_on_backprop():
    model = nowt.convert(tiny_mlp(), "fa", exclude=["2.weight"])
    assert model[2].rule == "bp" and model[0].rule == "fa"
    for pattern, rules in (["*.weight"], ["bp", "bp", "bp"]), (["0.bias"], ["bp", "fa", "fa"]):
        assert [m.rule.name for m in nowt.convert(tiny_mlp(), "fa", exclude=pattern)[::2]] == rules
    normed = nn.Sequential(nn.utils.parametrizations.weight_norm(nn.Linear(3, 3)), nn.Linear(3, 2))
    for name in ("0.weight", "0.parametrizations.weight.original1"):
        converted = nowt.convert(copy.deepcopy(normed), "fa", exclude=[name])
        assert [converted[0].rule.name, converted[1].rule.name] == ["bp", "fa"], name
    attention = nn.Sequential(nn.MultiheadAttention(4, 2), nn.Linear(4, 4))
    converted = nowt.convert(attention, "fa", exclude=["0.out_proj.weight"])
    assert converted[0].out_proj.rule == "bp" and converted[0].in_proj.rule == "fa"
    with pytest.raises(ValueError, match=r"exclude: \['2\.wieght'\] match\(es\) no layer"):
        nowt.convert(tiny_mlp(), "fa", exclude=["2.wieght"])


class MaskedAttention(nn.Module):
    """timm's Swin V1 (fused attention) adds a learned table as the attention mask: added, not multiplied."""

    def __init__(self, tokens=4, dim=8):
        super().__init__()
        self.qkv, self.head = nn.Linear(dim, 3 * dim), nn.Linear(tokens * dim, 3)
        self.relative_position_bias_table = nn.Parameter(torch.randn(tokens, tokens))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=self.relative_position_bias_table)
        return self.head(h.flatten(1))


def test_a_table_only_added_in_an_op_that_also_multiplies_is_accepted():
    model = nowt.convert(MaskedAttention(), "fa", seed=0)
    model(torch.randn(2, 4, 8)).sum().backward()  # the first forward's watch: no refusal
    assert model.relative_position_bias_table.grad is not None
    bias_as_weight = MaskedAttention()
    bias_as_weight.forward = lambda x: F.linear(x, bias_as_weight.relative_position_bias_table)  # multiplied
    with pytest.raises(ValueError, match="relative_position_bias_table.*is used by .*linear"):
        nowt.convert(bias_as_weight, "fa", seed=0)(torch.randn(2, 4))


def test_layers_run_outside_the_models_forward_before_it_are_warned_once():
    """A loop that never calls the model (model.decode(model.encode(x)), a submodule called on its own) never
    runs the first-forward check: a tied decoder's F.linear(h, enc.weight.t()) would train by backprop
    without a word. The first converted layer run outside the model's forward says so, once."""
    x = torch.randn(4, 8)
    model = nowt.convert(TiedAutoencoder(), "fa", seed=0)

    def by_hand():
        return F.linear(torch.tanh(model.enc(torch.tanh(model.pre(x)))), model.enc.weight.t())

    with pytest.warns(UserWarning, match=r"converted layer 'pre' ran outside the model's forward .*check has "
                                         r"not run; call the model itself once first"):
        by_hand().square().sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_hand().square().sum().backward()  # once only, and nothing left on the layers' path
    assert not any(m._forward_pre_hooks for m in nowt.feedback_layers(model).values())
    with pytest.raises(ValueError, match=r"'enc\.weight'"):
        model(x)  # the model's own first forward is still checked
    model = nowt.convert(tiny_mlp(), "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 5).double()).sum().backward()  # run inside the model's forward: nothing said
        model[0](torch.randn(2, 5).double())  # nor after it


class PrototypeHead(nn.Module):
    """Class prototypes held in an embedding table, each class scored by its prototype's cosine similarity or
    distance to the features: a product with the table in disguise, whose backward reads it."""

    def __init__(self, score):
        super().__init__()
        self.body, self.protos, self.score = nn.Linear(8, 8), nn.Embedding(5, 8), score

    def forward(self, x):
        return self.score(torch.tanh(self.body(x)), self.protos.weight)


SCORES = {"cosine": lambda h, w: F.cosine_similarity(h[:, None], w[None], dim=-1),
          "distance": lambda h, w: -torch.cdist(h, w)}


@pytest.mark.parametrize("score", list(SCORES))
def test_a_table_scored_by_cosine_similarity_or_distance_is_refused(score):
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"'protos\.weight' \(the table of embedding 'protos'\) is used by "
                                         r"torch\..*(cosine_similarity|cdist).*exclude=\['protos'\]"):
        nowt.convert(PrototypeHead(SCORES[score]), "fa", seed=0)(x)
    model = nowt.convert(PrototypeHead(SCORES[score]), "fa", seed=0, exclude=["protos"])
    loss = model(x).square().sum()
    with torch.no_grad():
        model.protos.weight.mul_(-3.0)
    with pytest.raises(RuntimeError, match="needed for gradient computation"):
        loss.backward()  # why: its backward reads the table


class ScaledTiedLM(nn.Module):
    """A tied LM head that multiplies by the embedding's table times a learned scalar: still the table."""

    def __init__(self):
        super().__init__()
        self.emb, self.body, self.scale = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Parameter(torch.ones(()))

    def forward(self, ids):
        return F.linear(torch.tanh(self.body(self.emb(ids))), self.scale * self.emb.weight)


def test_a_table_scaled_by_a_learned_scalar_before_its_product_is_still_refused():
    with pytest.raises(ValueError, match=r"'emb\.weight' \(the table of embedding 'emb'\) is used by "
                                         r"torch\.nn\.functional\.linear"):
        nowt.convert(ScaledTiedLM(), "fa", seed=0)(torch.randint(0, 10, (2, 3)))


class Rows(nn.Module):
    """Rows looked up from a table, then used by `how` with the activations `h`."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.pre, self.emb = how, nn.Linear(4, 5), nn.Embedding(7, 5)
        self.bag, self.fc, self.att = nn.EmbeddingBag(7, 5, mode="sum"), nn.Linear(5, 2), nn.Linear(5, 1)

    def forward(self, x, ids):
        h = torch.tanh(self.pre(x))
        if self.how == "full table":  # a tied head written with a lookup of every row
            return h @ self.emb(torch.arange(7)).t()
        if self.how == "sampled softmax":
            return (h.unsqueeze(1) * self.emb(ids)).sum(-1)
        if self.how == "bmm":
            return torch.bmm(self.emb(ids), h.unsqueeze(-1)).squeeze(-1)
        if self.how == "weighted bag":
            return self.bag(ids, per_sample_weights=h[:, :ids.shape[1]])
        e = self.emb(ids)  # input embeddings, pooled (masked mean, attention by activations): no transport
        mask = (ids > 0).float().unsqueeze(-1)
        pooled = (e * mask).sum(1) / mask.sum(1).clamp(min=1) + (e * torch.softmax(self.att(e), 1)).sum(1)
        return self.fc(pooled * 2.0) + h[:, :2]


@pytest.mark.parametrize("how", ["full table", "sampled softmax", "bmm", "weighted bag"])
def test_rows_looked_up_from_a_table_and_used_as_a_matrix_are_refused(how):
    """They passed as "a lookup": the errors reached `pre` across the table by backprop, without a word."""
    table = "bag" if how == "weighted bag" else "emb"
    with pytest.raises(ValueError, match=rf"'{table}\.weight' \(the table of embedding '{table}'\) is used"):
        nowt.convert(Rows(how), "fa", seed=0)(torch.randn(3, 4), torch.randint(0, 7, (3, 2)))


def test_rows_looked_up_and_pooled_as_inputs_are_accepted():
    model = nowt.convert(Rows("pooled"), "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(3, 4), torch.randint(0, 7, (3, 4))).sum().backward()


class ParametrizedTiedLM(nn.Module):
    """A weight-normed embedding table, looked up and (`tied`) multiplied by as the LM head."""

    def __init__(self, tied: bool):
        super().__init__()
        self.tied, self.emb, self.fc = tied, nn.Embedding(10, 6), nn.Linear(6, 6)
        torch.nn.utils.parametrizations.weight_norm(self.emb)
        self.head = nn.Linear(6, 10)

    def forward(self, ids):
        h = torch.tanh(self.fc(self.emb(ids)))
        return F.linear(h, self.emb.weight) if self.tied else self.head(h)


def test_a_parametrized_table_used_as_a_matrix_is_refused():
    """A table under weight_norm or orthogonal is a new tensor at every use, so the check watched one no
    forward used: the tied head sent errors across it by backprop without a word."""
    ids = torch.randint(0, 10, (4, 3))
    with pytest.raises(ValueError, match=r"'emb\.weight' \(the table of embedding 'emb'\) is used by "
                                         r"torch\.nn\.functional\.linear"):
        nowt.convert(ParametrizedTiedLM(tied=True), "fa", seed=0)(ids)
    torch.manual_seed(0)
    plain = ParametrizedTiedLM(tied=False)
    model = nowt.convert(copy.deepcopy(plain), "fa", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(ids), plain(ids), rtol=0, atol=0)  # the checked forward: the same
    model(ids).sum().backward()  # and after it, nothing is left cached
    assert not torch.nn.utils.parametrize._cache_enabled


class MaxScored(nn.Module):
    """Each table row scored against h by a product reduced with `reduce` over the features."""

    def __init__(self, reduce):
        super().__init__()
        self.reduce, self.pre, self.emb = reduce, nn.Linear(4, 5), nn.Embedding(7, 5)

    def forward(self, x):
        return self.reduce(torch.tanh(self.pre(x)).unsqueeze(1) * self.emb.weight)


@pytest.mark.parametrize("reduce", [lambda p: p.amax(-1), lambda p: torch.logsumexp(p, -1),
                                    lambda p: p.max(-1).values, lambda p: torch.amin(p, dim=2)],
                         ids=["amax", "logsumexp", "max", "amin"])
def test_a_product_with_a_table_reduced_by_a_maximum_is_refused(reduce):
    """Only sums and means were taken for a matrix product: a (soft) maximum sends errors across the table
    to h just the same."""
    with pytest.raises(ValueError, match=r"'emb\.weight' \(the table of embedding 'emb'\) is used by torch\."
                                         r"(Tensor\.)?(amax|logsumexp|max|amin) of an elementwise product"):
        nowt.convert(MaxScored(reduce), "fa", seed=0)(torch.randn(3, 4))
