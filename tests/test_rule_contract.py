"""The rule contract: what every rule in the registry must do, checked for each one the registry lists when
the tests are collected (a new rule is tested without an edit here) and for a toy rule registered by a
fixture for the length of each test (so a rule added by a user goes through the same checks).

Per-layer rules, on a small MLP and ConvNet (and a one-block ViT where cheap):
- conversion keeps the forward pass; forward and backward give a finite gradient on every parameter;
- a state_dict loaded into a freshly converted model gives identical outputs and gradients;
- `torch.compile` (aot_eager; on a ConvNet, or the MLP for a rule that takes MLPs only) gives the eager
  gradients and buffers;
- `weight_angles` is defined (finite, in [0, 180]) exactly where the rule's `alignment_pairs` defines both
  matrices, `update_angles` on every layer;
- no weight transport, keyed on the rule's own `transports_weights`: a rule that declares it reads no
  forward weight gives upstream updates that do not move when downstream weights change (between forward
  and backward, and before the forward in directions the batch does not see); one that declares it reads
  them (bp; the sign rules read W's signs) gives updates that do move.
Every rule, whole-network ones too: `nowt.train.fit` for 2 epochs equals 1 epoch and a resumed 1, exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import is_per_layer, per_layer_rules, tiny_convnet, tiny_mlp
from torch import Tensor, nn

import nowt
from nowt.rules import _REGISTRY as REGISTRY
from nowt.rules import Option, RandomFeedbackRule, declare, list_rules, register, rule_class
from nowt.train import TrainConfig, fit

TOY = "toy-scaled-fa"


class ScaledFA(RandomFeedbackRule):
    """A toy rule, registered only inside these tests: feedback alignment through B * toy_gain (B / 2), with
    one option of its own declared here, which is all it takes to be a TrainConfig field and a flag."""

    name = TOY
    options = {**RandomFeedbackRule.options,
               **declare(Option("toy_gain", 0.5, "the toy's factor on B", gt=0.0, metavar="G"))}

    def feedback(self, layer: nn.Module) -> Tensor:
        return layer.feedback * self.toy_gain


def tiny_vit() -> nn.Module:
    return nowt.models.vit(in_channels=1, num_classes=3, image_size=8, patch=4, dim=8, depth=1,
                           heads=2).double()


MODELS = {"mlp": (tiny_mlp, (2, 5)), "convnet": (tiny_convnet, (2, 4, 8, 8)), "vit": (tiny_vit, (2, 1, 8, 8)),
          "convnet32": (lambda: nowt.models.convnet(3, 10, 4, 8), (4, 3, 8, 8))}  # float32, for compile


def cases(models: tuple[str, ...]) -> list:
    """(rule, model) for every per-layer rule in the registry and the toy, on each model it converts."""
    mlp_only = set(per_layer_rules()) - set(per_layer_rules(any_model=True))
    return [pytest.param(r, m, id=f"{r}-{m}") for r in [*per_layer_rules(), TOY] for m in models
            if m == "mlp" or r not in mlp_only]


@pytest.fixture
def rule(request) -> str:
    """The rule's name; the toy rule is in the registry (through the public `register`) for this test only."""
    name = request.param
    if name != TOY:
        yield name
        return
    register(ScaledFA)
    try:
        yield name
    finally:
        REGISTRY.pop(TOY)


def _data(shape: tuple[int, ...], seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.double), torch.tensor([0, 1] * (shape[0] // 2))


def _converted(make, rule: str, seed: int = 0, init_seed: int = 0) -> nn.Module:
    torch.manual_seed(init_seed)
    return nowt.convert(make(), rule, seed=seed)


def _step(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Forward and backward of a cross-entropy loss from zeroed gradients; torch's RNG fixed first (brsf's
    draws come from its own buffers, dropout from it)."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach()


@pytest.mark.parametrize("rule,model", cases(("mlp", "convnet", "vit")), indirect=["rule"])
def test_converts_keeping_the_forward_and_gives_finite_gradients(rule, model):
    make, shape = MODELS[model]
    torch.manual_seed(0)
    reference = make()
    converted = nowt.convert(copy.deepcopy(reference), rule, seed=0)
    layers = nowt.feedback_layers(converted)
    assert layers and all(m.rule == rule for m in layers.values())
    x, y = _data(shape)
    torch.testing.assert_close(converted(x), reference(x), rtol=1e-12, atol=1e-12)
    _step(converted, x, y)
    for name, p in converted.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in converted.parameters())


@pytest.mark.parametrize("rule,model", cases(("mlp", "convnet", "vit")), indirect=["rule"])
def test_state_dict_round_trip_gives_identical_outputs_and_gradients(rule, model):
    make, shape = MODELS[model]
    x, y = _data(shape)
    source = _converted(make, rule)
    _step(source, x, y)  # state made at the first forward (dfa's B, brsf's draw count) is saved too
    fresh = _converted(make, rule, seed=1, init_seed=1)
    assert not torch.equal(_step(fresh, x, y), _step(source, x, y))
    fresh.load_state_dict(source.state_dict())
    assert torch.equal(_step(fresh, x, y), _step(source, x, y))
    for (name, a), b in zip(source.named_parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a.grad, b.grad), name
    for (name, a), b in zip(source.named_buffers(), fresh.buffers(), strict=True):
        assert torch.equal(a, b), name


def compile_cases() -> list:
    """Each rule once, on the ConvNet where it converts any model (else the MLP): a compile costs seconds."""
    mlp_only = set(per_layer_rules()) - set(per_layer_rules(any_model=True))
    chosen = {c.values[0]: "mlp" if c.values[0] in mlp_only else "convnet32" for c in cases(("mlp",))}
    return [pytest.param(r, model, id=f"{r}-{model}") for r, model in chosen.items()]


@pytest.mark.parametrize("rule,model", compile_cases(), indirect=["rule"])
def test_compiled_gradients_equal_eager(rule, model):
    """The aot_eager backend runs dynamo's capture and AOTAutograd (where custom autograd Functions and
    buffer updates must be traced correctly) without the minutes of C++ code generation inductor needs."""
    torch._dynamo.reset()
    make, shape = MODELS[model]
    base = _converted(make, rule)
    eager, compiled = copy.deepcopy(base), copy.deepcopy(base)
    run = torch.compile(compiled, backend="aot_eager")
    for seed in range(2):
        x = _data(shape, seed)[0].to(next(base.parameters()).dtype)
        eager(x).square().sum().backward()
        run(x).square().sum().backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, a), b in zip(eager.named_buffers(), compiled.buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)


@pytest.mark.parametrize("rule,model", cases(("mlp", "convnet")), indirect=["rule"])
def test_angles_are_defined_where_the_rule_says(rule, model):
    make, shape = MODELS[model]
    converted = _converted(make, rule)
    x, y = _data(shape)
    _step(converted, x, y)
    layers = nowt.feedback_layers(converted)
    pairs = nowt.metrics.alignment_pairs(converted)
    weight = nowt.weight_angles(converted)
    assert list(weight) == list(pairs) == list(layers)
    for name, (fb, ref) in pairs.items():
        if fb is None or ref is None:
            assert math.isnan(weight[name]), name
        else:
            assert 0 <= weight[name] <= 180, (name, weight[name])
    update = nowt.update_angles(converted, F.cross_entropy, x, y)
    assert list(update) == list(layers) and all(0 <= a <= 180 for a in update.values()), update


def _first_layer_grads(model: nn.Module, x: Tensor, between=None) -> list[Tensor]:
    """The first converted layer's parameter gradients of a squared-output loss; `between(model)` runs after
    the forward pass and before the backward pass."""
    out = model(x)
    if between is not None:
        between(model)
    out.square().sum().backward()
    first = next(iter(nowt.feedback_layers(model).values()))
    return [p.grad.clone() for p in first.parameters()]


def _downstream(model: nn.Module) -> list[nn.Module]:
    return list(nowt.feedback_layers(model).values())[1:]


def _rewrite_downstream(model: nn.Module) -> None:
    for layer in _downstream(model):
        layer.weight.data.mul_(-3.0).add_(1.0)  # through .data: autograd's version counter does not see it


@torch.no_grad()
def _unseen_downstream_change(model: nn.Module, x: Tensor) -> None:
    """Adds to each downstream Linear layer's W a large rank-one change in a direction orthogonal to every
    input of the batch it gets, so the forward pass is unchanged but many of W's entries change sign."""
    linears = [m for m in _downstream(model) if isinstance(m, nn.Linear)]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.__setitem__(m, a[0].detach())) for m in linears]
    model(x)
    for h in hooks:
        h.remove()
    g = torch.Generator().manual_seed(3)
    for m in linears:
        seen = inputs[m].reshape(-1, m.in_features)
        assert len(seen) < m.in_features, "the batch must leave a direction unseen"
        unseen = torch.linalg.svd(seen, full_matrices=True).Vh[-1]
        u = torch.randn(m.out_features, generator=g, dtype=unseen.dtype)
        m.weight.add_(3 * m.weight.abs().max() * torch.outer(u / u.abs().max(), unseen / unseen.abs().max()))


@pytest.mark.parametrize("rule,model", cases(("mlp", "convnet")), indirect=["rule"])
def test_no_weight_transport_is_as_the_rule_declares(rule, model):
    make, shape = MODELS[model]
    x, _ = _data(shape)
    reads_weights = nowt.make_rule(rule).transports_weights
    clean = _first_layer_grads(_converted(make, rule), x)
    rewritten = _first_layer_grads(_converted(make, rule), x, between=_rewrite_downstream)
    changed = _converted(make, rule)
    before = changed(x).detach()
    _unseen_downstream_change(changed, x)
    torch.testing.assert_close(changed(x), before, rtol=1e-9, atol=1e-12)  # the same forward pass
    unseen = _first_layer_grads(changed, x)
    if not reads_weights:
        assert all(torch.equal(a, b) for a, b in zip(clean, rewritten, strict=True))
        for a, b in zip(clean, unseen, strict=True):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12)
    else:  # it reads them: bp in backward; the sign rules W's signs when the forward pass forms B
        assert any(not torch.allclose(a, b, rtol=1e-3, atol=1e-6) for a, b in zip(clean, unseen, strict=True))


def _task(n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return x, (x @ torch.randn(6, 3, generator=torch.Generator().manual_seed(9))).argmax(1)


@pytest.mark.parametrize("rule", [*list_rules(), TOY], indirect=True)
def test_two_epochs_equal_one_and_a_resumed_one(rule, tmp_path):
    train, test = _task(48, 0), _task(16, 1)
    cfg = dict(rule=rule, model="mlp", hidden=(8,), batch_size=16, lr=0.05, lr_schedule="constant")
    unbroken = fit(TrainConfig(**cfg, epochs=2, out_dir=str(tmp_path / "a")), train, test, progress=False)
    fit(TrainConfig(**cfg, epochs=1, out_dir=str(tmp_path / "b")), train, test, progress=False)
    resumed = fit(TrainConfig(**cfg, epochs=2, out_dir=str(tmp_path / "b")), train, test, resume=True,
                  progress=False)
    assert len(resumed) == 2
    shown = [json.dumps({k: v for k, v in r.items() if k != "seconds"}) for r in (*resumed, *unbroken)]
    assert shown[:2] == shown[2:]  # as text: a nan read back from the checkpoint is another nan object
    a = nowt.checkpoint.load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = nowt.checkpoint.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (is_per_layer(rule) and bool(a["history"][0]["weight_angles"])) == is_per_layer(rule)


def test_every_contract_test_takes_every_registered_rule_and_the_toy():
    """The toy rule goes through every test here that takes a rule, as does each rule the registry lists;
    outside its tests the toy is not registered."""
    per_layer = {c.values[0] for c in cases(("mlp",))}
    assert per_layer == {*per_layer_rules(), TOY} and TOY not in list_rules()
    tests = [f for name, f in globals().items() if name.startswith("test_") and hasattr(f, "pytestmark")]
    assert len(tests) >= 6
    for f in tests:
        (mark,) = [m for m in f.pytestmark if m.name == "parametrize"]
        names = {p.values[0] if hasattr(p, "values") else p for p in mark.args[1]}
        assert TOY in names and set(per_layer_rules()) <= names, f.__name__
        assert set(list_rules()) <= names or "model" in mark.args[0], f.__name__


def test_the_toy_rule_differs_from_fa_so_its_tests_are_its_own():
    register(ScaledFA)
    try:
        x, y = _data((2, 5))
        fa, toy = _converted(tiny_mlp, "fa"), _converted(tiny_mlp, TOY)
        assert torch.equal(fa[0].feedback, toy[0].feedback)
        _step(fa, x, y)
        _step(toy, x, y)
        assert torch.equal(fa[4].weight.grad, toy[4].weight.grad)  # the output layer learns from e alike
        torch.testing.assert_close(toy[0].weight.grad, fa[0].weight.grad / 4)  # B / 2 twice on the way
        assert rule_class(TOY) is ScaledFA
    finally:
        REGISTRY.pop(TOY)


def test_the_toy_rule_s_option_is_a_config_field_a_flag_and_checked_while_it_is_registered():
    """The toy declares `toy_gain` in its own class (no edit to train/config.py or cli.py): registered, it is
    a TrainConfig field, TOML key and `nowt train` flag, checked from its declaration on both sides, passed to
    the rule and refused for other rules; unregistered, all of that is gone again."""
    from nowt.cli import build_parser, config_from_args
    from nowt.train import rule_options
    from nowt.train.config import FIELDS

    assert "toy_gain" not in FIELDS
    register(ScaledFA)
    try:
        field = FIELDS["toy_gain"]
        assert (field.default, field.metadata["rule_option"], field.metadata["gt"]) == (0.5, True, 0.0)
        cfg = TrainConfig(rule=TOY, toy_gain=0.25).validate()
        assert cfg.identity()["toy_gain"] == 0.25 and "toy_gain" not in TrainConfig(rule="fa").identity()
        assert rule_options(cfg) == {"toy_gain": 0.25}
        assert TrainConfig.from_dict({"rule": TOY, "toy-gain": 2}).toy_gain == 2.0  # a TOML key
        with pytest.raises(ValueError, match=r"^toy_gain \(--toy-gain\) must be > 0.0, got -1.0$"):
            TrainConfig(rule=TOY, toy_gain=-1.0).validate()
        with pytest.raises(ValueError, match=r"^toy_gain must be a number > 0.0, got 0$"):
            nowt.make_rule(TOY, toy_gain=0)
        with pytest.raises(ValueError, match=f"^--toy-gain applies only to: {TOY} \\(not 'fa'\\)$"):
            rule_options(TrainConfig(rule="fa", toy_gain=2.0))
        parser = build_parser()
        cfg = config_from_args(parser.parse_args(["train", "--rule", TOY, "--toy-gain", "0.75"]))
        assert cfg.toy_gain == 0.75
        (sub,) = [a for a in parser._actions if getattr(a, "choices", None) and "train" in a.choices]
        assert f"the toy's factor on B (rule option of: {TOY}) (default: 0.5)" in \
            " ".join(sub.choices["train"].format_help().split())
        model = nowt.train.build_model(cfg, (5,), 2)
        assert {m.rule.toy_gain for m in model.modules() if hasattr(m, "rule")} == {0.75}
    finally:
        REGISTRY.pop(TOY)
    assert "toy_gain" not in FIELDS and "toy_gain" not in dataclasses.asdict(TrainConfig())
