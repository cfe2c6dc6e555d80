"""nowt.integrations.common, the callbacks' framework-free part: the start-of-training hooks."""

import torch
from torch import nn

import nowt
from nowt.integrations.common import RuleHooks
from nowt.train.learners import show_one_batch


def bn_dropout_wm() -> nn.Module:
    torch.manual_seed(0)
    return nowt.convert(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5),
                                      nn.Linear(8, 3)), "wm", seed=0, mirror_warmup=1)


def test_the_start_of_training_forward_is_nowt_trains_no_batch_norm_statistics_no_dropout_draw():
    # It ran in train mode: batch norm took this batch's statistics and dropout drew from the global RNG,
    # which `nowt train`'s forward (eval mode, plain ops: `show_one_batch`) does not.
    x = torch.randn(16, 4) * 3 + 5
    reference = bn_dropout_wm()
    torch.manual_seed(123)
    show_one_batch(reference, x)
    for rule in nowt.feedback_rules(reference):
        rule.begin_training(reference, 16)
    expected_draw = torch.rand(1)

    model = bn_dropout_wm()
    torch.manual_seed(123)
    assert RuleHooks(model).begin(model, 16, lambda: model(x))  # wm warms up: it needs the forward
    assert torch.equal(torch.rand(1), expected_draw)
    assert model.training and model[4].last_input_shape == (16, 8)
    assert model[1].num_batches_tracked == 0 and torch.equal(model[1].running_mean, torch.zeros(8))
    assert all(torch.equal(t, reference.state_dict()[k]) for k, t in model.state_dict().items())
