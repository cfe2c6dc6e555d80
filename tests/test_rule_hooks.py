"""The whole-model hooks a rule gives the training loop: the weight mirror's schedule lives in its rule, init
schemes ask which tensors are random feedback, and metrics ask each rule what B is compared with."""

import math

import pytest
import torch
from conftest import is_per_layer, mirror_calls, per_layer_rules, tiny_convnet, tiny_mlp
from torch import nn

import nowt
from nowt.rules import RandomFeedbackRule, Rule, WholeNetworkRule, rule_class
from nowt.targetprop import ALGORITHMS, TargetPropTrainer


def has_training_hooks(rule: str) -> bool:
    """Whether the rule's class gives the training loop hooks of its own (the weight mirror's schedule)."""
    cls = rule_class(rule)
    return cls.begin_training is not Rule.begin_training or cls.after_step is not Rule.after_step


def test_weight_mirror_schedule_runs_from_its_hooks(monkeypatch):
    calls = mirror_calls(monkeypatch)
    model = nowt.convert(tiny_mlp(), "wm", seed=0, mirror_steps=3, mirror_warmup=7)
    model(torch.randn(48, 5, dtype=torch.double))
    (rule,) = nowt.feedback_rules(model)
    rule.begin_training(model, 48)
    for step in range(1, 25):
        rule.after_step(model, step)
    # the warm-up sized per layer (fan-in 5, 4, 3 on one position: batches of 5, 4, 3), then after steps 8, 16
    # and 24: 48 * 8 // 8
    assert calls == [(7, 5), (7, 4), (7, 3)] + [(3, 48)] * 3
    for name in ("0", "2", "4"):
        assert int(model.get_submodule(name).mirror_batch_size) == 48  # checkpointed: a resume has it


def test_weight_mirror_warm_up_aligns_b():
    model = nowt.convert(nowt.models.mlp(784, (256,), 10), "wm", seed=0)
    model(torch.randn(64, 784))
    assert min(nowt.weight_angles(model).values()) > 60
    for rule in nowt.feedback_rules(model):
        rule.begin_training(model, 64)
    assert max(nowt.weight_angles(model).values()) < 20


def test_weight_mirror_without_begin_training_uses_the_last_batch(monkeypatch):
    calls = mirror_calls(monkeypatch)
    model = nowt.convert(tiny_mlp(), "wm", seed=0)
    (rule,) = nowt.feedback_rules(model)
    with pytest.raises(RuntimeError, match="run a forward pass first"):
        rule.after_step(model, 8)
    calls.clear()
    model(torch.randn(40, 5, dtype=torch.double))
    for step in range(1, 9):
        rule.after_step(model, step)
    assert calls == [(1, 40)]  # noise pretraining: the batch last seen, every eighth step


def test_weight_mirror_options_are_checked():
    assert nowt.make_rule("wm").mirror_steps == 1 and nowt.make_rule("wm").mirror_warmup == 300
    with pytest.raises(ValueError, match="mirror_steps must be an int >= 0"):
        nowt.make_rule("wm", mirror_steps=-1)
    with pytest.raises(ValueError, match="unknown option"):
        nowt.make_rule("fa", mirror_steps=2)


@pytest.mark.parametrize("rule", per_layer_rules())
def test_hooks_are_no_ops_except_for_weight_mirrors(rule):
    model = nowt.convert(tiny_mlp(), rule, seed=0)
    model(torch.randn(8, 5, dtype=torch.double))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for r in nowt.feedback_rules(model):
        r.begin_training(model, 8)
        r.after_step(model, 2)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert (changed != []) == has_training_hooks(rule), changed
    assert has_training_hooks("wm")


@pytest.mark.parametrize("rule", per_layer_rules())
def test_feedback_tensors_are_the_random_feedback_only(rule):
    model = nowt.convert(tiny_mlp(), rule, seed=0)
    for layer in nowt.feedback_layers(model).values():
        tensors = layer.rule.feedback_tensors(layer)
        if isinstance(layer.rule, RandomFeedbackRule) and not layer.rule.transports_weights:  # fa, kp, wm
            assert len(tensors) == 1 and tensors[0] is layer.feedback
        else:  # W itself, B derived from W's signs, or DFA's B (another shape, made at the first forward)
            assert tensors == []


def test_feedback_rules_lists_each_rule_once_in_layer_order():
    model = tiny_mlp()
    fa = nowt.make_rule("fa")
    model[0] = nowt.convert(model[0], fa, seed=0)
    model[2] = nowt.convert(model[2], "kp", seed=0)
    model[4] = nowt.convert(model[4], fa, seed=0)
    rules = nowt.feedback_rules(model)
    assert [r.name for r in rules] == ["fa", "kp"] and rules[0] is fa
    assert nowt.feedback_rules(nn.Sequential(nn.ReLU())) == []


def test_alignment_pairs_come_from_each_rule():
    model = nowt.convert(tiny_convnet(), "fa", seed=0)
    pairs = nowt.metrics.alignment_pairs(model)
    assert list(pairs) == list(nowt.feedback_layers(model))
    assert all(fb is layer.feedback and ref is layer.weight
               for (fb, ref), layer in zip(pairs.values(), nowt.feedback_layers(model).values(), strict=True))
    dfa = nowt.convert(tiny_mlp(), "dfa", seed=0)
    assert set(map(tuple, nowt.metrics.alignment_pairs(dfa).values())) == {(None, None)}  # before a forward
    dfa(torch.randn(3, 5, dtype=torch.double))
    pairs = nowt.metrics.alignment_pairs(dfa)
    w = [dfa[i].weight.detach() for i in (0, 2, 4)]
    assert torch.equal(pairs["4"][1], w[2]) and torch.allclose(pairs["0"][1], w[2] @ w[1] @ w[0])
    assert not math.isnan(nowt.weight_angles(dfa)["0"])


def test_target_propagation_registers_whole_network_rules_with_a_learner():
    whole = [r for r in nowt.list_rules() if not is_per_layer(r)]
    assert whole and whole == list(ALGORITHMS)  # target propagation registers each of its algorithms
    assert nowt.list_rules()[-len(whole):] == whole  # listed after every per-layer rule
    cls = rule_class("sdtp")
    assert issubclass(cls, WholeNetworkRule) and cls.defaults() == {
        "schedule": "parallel", "alternate_every": 0, "inverse_lr": 1e-4, "inverse_betas": (0.9, 0.999),
        "inverse_eps": 1e-8, "sigma": 0.1}  # no alpha: the top target is through g_L
    assert rule_class("dtp").defaults()["alpha"] == 0.1
    assert not issubclass(rule_class("dfa"), WholeNetworkRule)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    learner = cls.learner(net, lr=0.01, seed=0, schedule="alternating")
    assert isinstance(learner, TargetPropTrainer) and learner.model is net
    assert (learner.algorithm.name, learner.schedule) == ("sdtp", "alternating")
    with pytest.raises(ValueError, match="unknown option"):
        cls.learner(net, lr=0.01, seed=0, shedule="parallel")


def test_the_mirror_step_shrinks_as_evidence_accumulates():
    """Issue 11: with W fixed, the annealed default keeps lowering B's noise where a fixed step (anneal 0)
    holds it at a floor; the count of training mirror steps is kept in a buffer (so a resume continues)."""
    import nowt

    angles = {}
    for anneal in (0.0, 2.0):
        torch.manual_seed(0)
        model = nowt.convert(torch.nn.Sequential(torch.nn.Linear(200, 20)), "wm", seed=0,
                             mirror_anneal=anneal, mirror_warmup=100)
        model(torch.randn(32, 200))
        rule = nowt.feedback_rules(model)[0]
        rule.begin_training(model, 32)
        for step in range(1, 3001):
            rule.after_step(model, step)
        assert int(model[0].mirror_count) == (375 if anneal else 0)  # every 8th of 3000 steps
        angles[anneal] = nowt.weight_angles(model)["0"]
    assert angles[2.0] < 0.75 * angles[0.0], angles  # 8.4 vs 12.5 degrees here
    with pytest.raises(ValueError, match="mirror_anneal must be a number >= 0"):
        nowt.convert(torch.nn.Linear(3, 2), "wm", mirror_anneal=-1.0)
