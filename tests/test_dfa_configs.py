"""DFA and IFA on layer configurations the small-network tests do not reach (explicitly padded, grouped,
transposed and 3-d convolutions, a Linear on a sequence, a layer used twice, a deeper IFA MLP), against
hand computations with plain autograd."""

import copy

import pytest
import torch
from torch import nn

import nowt

D = torch.double


DFA_LAYERS = {
    "conv2d g2 s2 d2": (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, dilation=2, groups=2), (2, 4, 8, 7)),
    "conv2d depthwise": (lambda: nn.Conv2d(3, 3, 3, groups=3), (2, 3, 5, 5)),
    "conv2d same even k": (lambda: nn.Conv2d(2, 3, 4, padding="same"), (2, 2, 5, 5)),
    "conv2d reflect": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 2, 5, 5)),
    "conv1d circular s2": (lambda: nn.Conv1d(2, 3, 3, stride=2, padding=2, padding_mode="circular"),
                           (2, 2, 7)),
    "convT2d g2 op1": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1, groups=2),
                       (2, 4, 3, 3)),
    "conv3d": (lambda: nn.Conv3d(2, 2, 2, stride=(1, 2, 1)), (2, 2, 3, 4, 3)),
    "linear 3d": (lambda: nn.Linear(4, 3), (2, 5, 4)),
}


@pytest.mark.parametrize("storage", ["dense", "seeded"])
@pytest.mark.parametrize("config", list(DFA_LAYERS))
def test_dfa_hidden_layer_configs_match_hand_computation(config, storage):
    """tanh -> layer -> tanh -> flatten -> linear: the layer's input gets e B with B of shape
    (n_out, *input.shape[1:]), its W and b the true gradients of (e B_out) * tanh'. A convolution padding its
    input itself ("same", a padding_mode) gave B the padded input's shape (B (3, 2, 8, 8) for a (2, 5, 5)
    input, drawn at 1/sqrt(128) where the input's size gives 1/sqrt(50)), and reflect or circular padding
    added pairs of B's entries at the borders."""
    make, shape = DFA_LAYERS[config]
    hidden = make().double()
    ref = nn.Sequential(nn.Tanh(), hidden, nn.Tanh(), nn.Flatten(), nn.LazyLinear(3).double())
    x = torch.randn(shape, dtype=D)
    ref(x)  # sizes the lazy layer
    model = nowt.convert(copy.deepcopy(ref), "dfa", seed=0, storage=storage)
    xr = x.clone().requires_grad_()
    y = model(xr)
    e = torch.randn_like(y)
    y.backward(e)
    h0 = torch.tanh(x)
    a1 = ref[1](h0)
    h1 = torch.tanh(a1).detach()
    b_hidden, b_out = model[1].feedback, model[4].feedback
    assert b_hidden.shape == (3, *shape[1:])
    torch.testing.assert_close(model[4].weight.grad, e.T @ h1.flatten(1))
    delta = (e @ b_out).view_as(a1) * (1 - h1**2)
    want_w, want_b = torch.autograd.grad(a1, [ref[1].weight, ref[1].bias], delta)
    torch.testing.assert_close(model[1].weight.grad, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model[1].bias.grad, want_b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(xr.grad, (e @ b_hidden.flatten(1)).view(shape) * (1 - h0**2))


@pytest.mark.parametrize("conv", [nn.Conv2d(2, 3, 4, padding="same"),
                                  nn.Conv2d(2, 3, 3, stride=2, padding=1, padding_mode="reflect"),
                                  nn.Conv1d(2, 3, 3, dilation=2, padding=2, padding_mode="circular"),
                                  nn.Conv2d(2, 3, 2, stride=3)],
                         ids=["same", "reflect", "circular", "stride3"])
def test_dfa_kernel_feedback_is_the_modules_own_input_gradient_with_b_for_w(conv):
    """conv_feedback="kernel" on padded and strided convolutions: the input gets what torch's own module,
    padding included, gives its input with B as its weight and e at every output position."""
    conv = conv.double()
    model = nowt.convert(nn.Sequential(nn.Tanh(), copy.deepcopy(conv), nn.Flatten()), "dfa", seed=0,
                         conv_feedback="kernel")
    x = torch.randn(2, 2, *[7] * (conv.weight.dim() - 2), dtype=D, requires_grad=True)
    out = model(x)
    e = torch.randn_like(out)
    out.backward(e)
    b = model[1].feedback
    conv.weight, conv.bias, conv.out_channels = nn.Parameter(b.clone()), None, b.shape[0]
    h = torch.tanh(x.detach()).requires_grad_()
    y = conv(h)
    (want,) = torch.autograd.grad(y, h, e.view(2, -1, *[1] * (y.dim() - 2)).expand_as(y))
    torch.testing.assert_close(x.grad, want * (1 - h.detach() ** 2))


def test_dfa_layer_used_twice_gets_e_b_at_both_inputs():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.out = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.layer(torch.tanh(self.layer(x)))))

    ref = Net().double()
    model = nowt.convert(copy.deepcopy(ref), "dfa", seed=0)
    x = torch.randn(3, 4, dtype=D, requires_grad=True)
    y = model(x)
    e = torch.randn_like(y)
    y.backward(e)
    b, b_out = model.layer.feedback, model.out.feedback
    with torch.no_grad():
        w, bias = ref.layer.weight, ref.layer.bias
        h1 = torch.tanh(x @ w.T + bias)
        h2 = torch.tanh(h1 @ w.T + bias)
        d1, d2 = (e @ b) * (1 - h1**2), (e @ b_out) * (1 - h2**2)
    torch.testing.assert_close(x.grad, e @ b)
    torch.testing.assert_close(model.layer.weight.grad, d2.T @ h1 + d1.T @ x.detach())
    torch.testing.assert_close(model.layer.bias.grad, (d1 + d2).sum(0))
    torch.testing.assert_close(model.out.weight.grad, e.T @ h2)


@pytest.mark.parametrize("acts", [(nn.Tanh, nn.ReLU, nn.Sigmoid), (nn.GELU, nn.SiLU, nn.LeakyReLU)])
def test_ifa_four_layers_sweep_the_error_up_through_the_forward_weights(acts):
    """da_1 = (B e) f'(a_1), da_k = (W_k da_{k-1}) f'(a_k) for k = 2, 3; the output layer learns from e."""
    ref = nn.Sequential(nn.Linear(5, 4), acts[0](), nn.Linear(4, 6), acts[1](), nn.Linear(6, 3), acts[2](),
                        nn.Linear(3, 2)).double()
    model = nowt.convert(copy.deepcopy(ref), "ifa", seed=1)
    x = torch.randn(7, 5, dtype=D)
    y = model(x)
    e = torch.randn_like(y)
    y.backward(e)
    a, h, deltas = [], [x], []
    for i in (0, 2, 4):
        a.append((h[-1] @ ref[i].weight.T + ref[i].bias).detach().requires_grad_())
        h.append(ref[i + 1](a[-1]))
    for k in range(3):
        (slope,) = torch.autograd.grad(h[k + 1].sum(), a[k])
        carried = e @ model[2].feedback if k == 0 else deltas[-1] @ ref[2 * k].weight.detach().T
        deltas.append(carried * slope)
    for layer, delta, inp in zip((model[0], model[2], model[4], model[6]), (*deltas, e), h, strict=True):
        torch.testing.assert_close(layer.weight.grad, delta.T @ inp.detach(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, delta.sum(0), rtol=1e-10, atol=1e-12)
