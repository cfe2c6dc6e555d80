"""The weight mirror's warm-up sized from each layer (issue 27 item 5): `mirror_warmup_batch=0` (the rule's
default) gives a layer that sees many positions a small noise batch and 100 steps, the default MLP exactly
the fixed warm-up (300 x 256), and an explicit batch (nowt train's 256, the paper's 128) the old schedule."""

import copy

import pytest
import torch
from torch import nn

import nowt
from nowt.reproduce.akrout2019 import OFFICIAL_MIRROR
from nowt.rules.wm import MIRROR_WARMUP_BATCH, WARMUP_TIME_CONSTANTS
from nowt.train.config import TrainConfig
from nowt.train.factories import build_model


def _wm(model: nn.Module, x: torch.Tensor, **options) -> tuple[nn.Module, object]:
    model = nowt.convert(model, "wm", seed=0, **options)
    model(x)
    return model, nowt.feedback_rules(model)[0]


def test_the_sized_warm_up_of_the_default_mlp_is_the_fixed_one_bit_for_bit():
    torch.manual_seed(0)
    base = nowt.models.mlp(784, (1000,), 10)
    x = torch.randn(32, 784)
    model, rule = _wm(copy.deepcopy(base), x)
    assert rule.warmup_plan(rule.layers(model)) == {"1": (300, 256), "3": (300, 256)}
    feedback = []
    for batch in (0, MIRROR_WARMUP_BATCH):  # sized (the rule's default), fixed (nowt train's); 30 steps
        model, rule = _wm(copy.deepcopy(base), x, mirror_warmup_batch=batch, mirror_warmup=30)
        assert set(rule.warmup_plan(rule.layers(model)).values()) == {(30, 256)}
        torch.manual_seed(1)
        rule.begin_training(model, 32)
        feedback.append([layer.feedback.clone() for layer in rule.layers(model).values()])
    assert all(torch.equal(a, b) for a, b in zip(*feedback, strict=True))


def test_layers_that_see_many_positions_get_a_small_batch_and_still_align():
    torch.manual_seed(0)
    # the convolutions only (the fully connected head, left on backprop here, keeps 300 x 256)
    model, rule = _wm(nowt.models.convnet(3, 10, 32, 32), torch.randn(8, 3, 32, 32), exclude=["7", "9"])
    plan = rule.warmup_plan(rule.layers(model))
    assert list(plan) == ["0", "3"]
    # the convolutions: a batch of about fan_in / positions (27 / 1024 -> 1; 800 / 256 -> 4), 100 steps
    steps = round(WARMUP_TIME_CONSTANTS / 0.1)
    assert plan["0"] == (steps, 1) and plan["3"][0] == steps and plan["3"][1] < 8
    fixed = 300 * 256
    assert all(s * b <= fixed for s, b in plan.values())
    rule.begin_training(model, 8)
    angles = nowt.weight_angles(model)
    for name, (steps_, batch) in plan.items():
        if steps_ * batch < fixed:  # sized below the old warm-up, yet at the schedule's floor (~13 deg)
            assert angles[name] < 20, (name, angles[name])


@pytest.mark.parametrize("options, expected", [({"mirror_warmup_batch": 64, "mirror_warmup": 7}, (7, 64)),
                                               (OFFICIAL_MIRROR, (468, 128))])
def test_an_explicit_warm_up_batch_keeps_the_fixed_schedule(options, expected):
    model, rule = _wm(nowt.models.convnet(3, 10, 32, 32), torch.randn(2, 3, 32, 32), **options)
    assert set(rule.warmup_plan(rule.layers(model)).values()) == {expected}


def test_nowt_train_keeps_its_fixed_warm_up():
    model = build_model(TrainConfig(rule="wm", model="convnet", seed=0), (3, 32, 32), 10)
    model(torch.randn(2, 3, 32, 32))
    rule = nowt.feedback_rules(model)[0]
    assert set(rule.warmup_plan(rule.layers(model)).values()) == {(300, 256)}


def test_nowt_train_sizes_the_warm_up_per_layer_when_asked():
    """`--mirror-warmup-batch 0`: on a token model the fixed warm-up (300 steps of 256 sequences) costs
    minutes, the sized one (100 steps of 1-4) a second."""
    from nowt.cli import build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["train", "--rule", "wm", "--model", "gpt",
                                                      "--mirror-warmup-batch", "0"]))
    model = build_model(cfg, (16,), 256)
    model(torch.randint(0, 256, (2, 16)))
    rule = nowt.feedback_rules(model)[0]
    plan = rule.warmup_plan(rule.layers(model))
    own_model, own = _wm(nowt.models.gpt((16,)), torch.randint(0, 256, (2, 16)))  # the rule's default: sized
    assert plan == own.warmup_plan(own.layers(own_model)) and max(batch for _, batch in plan.values()) <= 32


def test_a_sized_plan_needs_a_forward_pass_and_a_valid_batch():
    model = nowt.convert(nowt.models.mlp(6, (5,), 3), "wm", seed=0)
    rule = nowt.feedback_rules(model)[0]
    with pytest.raises(RuntimeError, match="has not seen an input yet"):
        rule.warmup_plan(rule.layers(model))
    with pytest.raises(ValueError, match="mirror_warmup_batch must be an int >= 0"):
        nowt.convert(nn.Linear(2, 2), "wm", mirror_warmup_batch=-1)


def test_nowt_mirror_mirrors_as_the_rule_was_made_and_its_arguments_override():
    """nowt.mirror(model) used mirror_layers' defaults whatever options the model was converted with (the
    paper's uniform noise, sigmoid response, raw sum, lr and batch were dropped): each layer now mirrors as
    its rule says, and an argument given to nowt.mirror still overrides the rule's."""
    def mirrored(convert_options: dict, **call) -> list[torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
        model = nowt.convert(net, "wm", seed=0, **convert_options)
        model(torch.randn(8, 20))
        nowt.mirror(model, 3, generator=torch.Generator().manual_seed(1), **call)
        return [layer.feedback.clone() for layer in nowt.feedback_layers(model).values()]

    def same(a, b) -> bool:
        return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))

    made = dict(mirror_noise="uniform", mirror_activation="sigmoid", mirror_normalize=False, mirror_decay=0.0,
                mirror_lr=0.01, mirror_batch=16)
    by_hand = dict(noise="uniform", activation="sigmoid", normalize=False, decay=0.0, lr=0.01, batch_size=16)
    assert same(mirrored(made), mirrored({}, **by_hand))
    assert not same(mirrored(made), mirrored({}))
    assert same(mirrored(made, lr=0.05, activation="none"), mirrored({}, **{**by_hand, "lr": 0.05,
                                                                            "activation": "none"}))
