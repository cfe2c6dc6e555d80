"""kp's B learns only if the optimizer holds it: one built before `nowt.convert` holds W alone, and B stays as
drawn while W learns, silently. A plain loop is warned at the first forward after such a step."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nowt


def _steps(net: nn.Module, opt: torch.optim.Optimizer, n: int = 2) -> None:
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    for _ in range(n):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


def test_an_optimizer_without_b_is_warned_and_one_with_it_is_not():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    early = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=1e-3)
    nowt.convert(net, "kp", seed=0)
    b = net[2].feedback.detach().clone()
    with pytest.warns(UserWarning, match=r"kp: a layer's W changed .* but its B did not: is B in the optim"):
        _steps(net, early)
    assert torch.equal(net[2].feedback, b)  # what the warning is about: B stayed as drawn
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fused in (False, True):
            _steps(net, torch.optim.AdamW(net.parameters(), lr=0.1, fused=fused), 3)
        frozen = nowt.convert(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)), "kp", seed=0)
        frozen[2].requires_grad_(False)  # W frozen: B detached, nothing to warn of
        _steps(frozen, torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1))
    assert not torch.equal(net[2].feedback, b)
