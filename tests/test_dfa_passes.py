"""DFA and IFA across passes: several backwards of one forward (retain_graph), and a forward under
torch.inference_mode before training (Lightning's sanity check and `trainer.validate` run under it)."""

import pytest
import torch
from torch import nn

import nowt


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 3))


X, Y = torch.randn(6, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 0, 1, 2])


def test_a_second_backward_that_skips_the_output_is_refused_not_given_the_first_ones_error():
    # The auxiliary loss's backward reused the first backward's e: layer 0's gradient from it equalled CE's.
    model = nowt.convert(mlp(), "dfa", seed=0)
    hidden = {}
    model[2].register_forward_hook(lambda m, a, out: hidden.__setitem__("h", out))
    nn.functional.cross_entropy(model(X), Y).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="did not pass through the model's output"):
        hidden["h"].square().sum().backward()


def test_backwards_of_one_forward_through_the_output_each_use_their_own_error():
    model = nowt.convert(mlp(), "dfa", seed=0)
    loss = nn.functional.cross_entropy(model(X), Y)
    loss.backward(retain_graph=True)
    once = model[0].weight.grad.clone()
    (2 * loss).backward()  # e doubled: layer 0's gradient grows by 2 x once
    torch.testing.assert_close(model[0].weight.grad, 3 * once)


@pytest.mark.parametrize(("rule", "options"), [("dfa", {}), ("dfa", {"storage": "shared"}),
                                               ("dfa", {"storage": "seeded"}), ("ifa", {}),
                                               ("dfa", {"blocks": ("2",)})])
def test_a_first_forward_under_inference_mode_leaves_training_as_it_was(rule, options):
    # B and its shape, made at the first forward, were inference tensors: the next forward raised
    # "Inference tensors do not track version counter".
    def trained(model: nn.Module) -> dict[str, torch.Tensor]:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(2):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X), Y).backward()
            opt.step()
        return model.state_dict()

    model = nowt.convert(mlp(), rule, seed=0, **options)
    with torch.inference_mode():
        model(X)
    assert not any(t.is_inference() for t in model.buffers())
    expected = trained(nowt.convert(mlp(), rule, seed=0, **options))
    got = trained(model)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
