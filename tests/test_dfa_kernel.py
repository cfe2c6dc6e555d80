"""DFA's conv_feedback="kernel": BioTorch's DFA for a convolution, against a hand computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import half_square_error
from torch import nn
from torch.nn.grad import conv2d_weight

import nowt

D = torch.double


def _kernel_convnet() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Tanh(),
                         nn.Conv2d(4, 3, 2, dilation=2), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).double()


def _spread_by_hand(e, b, in_shape, stride, padding, dilation):
    """BioTorch's conv DFA by loops: input position (i, j) of channel c sums e_o * B[o, c, u, v] over every
    output position (p, q) and tap (u, v) that reads it."""
    n, (c_in, h, w), (kh, kw) = e.shape[0], in_shape, b.shape[2:]
    out_h = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    out_w = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    grad = torch.zeros(n, c_in, h, w, dtype=e.dtype)
    for p in range(out_h):
        for q in range(out_w):
            for u in range(kh):
                for v in range(kw):
                    i, j = p * stride - padding + u * dilation, q * stride - padding + v * dilation
                    if 0 <= i < h and 0 <= j < w:
                        grad[:, :, i, j] += e @ b[:, :, u, v]
    return grad


def test_kernel_conv_feedback_is_biotorchs_spread_error_matching_hand_computation():
    model = nowt.convert(_kernel_convnet(), "dfa", seed=4, conv_feedback="kernel", feedback_init="xavier")
    c1, c2, fc = model[0], model[2], model[4]
    x = torch.randn(2, 3, 8, 8, dtype=D, requires_grad=True)
    e = half_square_error(model, x, torch.randn(2, 2, dtype=D))
    assert c1.feedback.shape == (2, 3, 3, 3) and c2.feedback.shape == (2, 4, 2, 2)
    assert fc.feedback.shape == (2, 12)  # a Linear keeps the full B
    bound = math.sqrt(6 / (4 * 4 + 2 * 4))  # Glorot fans of a 2 x 4 x 2 x 2 convolution weight
    assert bound * 0.8 < c2.feedback.abs().max() <= bound
    with torch.no_grad():
        h1 = torch.tanh(F.conv2d(x, c1.weight, c1.bias, stride=2, padding=1))
        h2 = F.conv2d(h1, c2.weight, c2.bias, dilation=2)
        g2 = (e @ fc.feedback.detach()).view(h2.shape)
        d1 = _spread_by_hand(e, c2.feedback, (4, 4, 4), 1, 0, 2) * (1 - h1**2)
        torch.testing.assert_close(x.grad, _spread_by_hand(e, c1.feedback, (3, 8, 8), 2, 1, 1))
    torch.testing.assert_close(c2.weight.grad, conv2d_weight(h1, c2.weight.shape, g2, dilation=2))
    want = conv2d_weight(x.detach(), c1.weight.shape, d1, stride=2, padding=1)
    torch.testing.assert_close(c1.weight.grad, want)
    torch.testing.assert_close(c1.bias.grad, d1.sum((0, 2, 3)))
    # no weight transport: the first layer's update ignores the weights after it
    first = c1.weight.grad.clone()
    model.zero_grad()
    out = model(x)
    for layer in (c2, fc):
        layer.weight.data.mul_(-3.0).add_(1.0)
    (0.5 * (out - out.detach() + e).square().sum()).backward()  # the same e as before
    torch.testing.assert_close(c1.weight.grad, first, rtol=0, atol=0)


def test_kernel_conv_feedback_refuses_what_it_cannot_spread():
    with pytest.raises(ValueError, match="groups 2"):
        nowt.convert(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "dfa", conv_feedback="kernel")
    with pytest.raises(ValueError, match="transposed"):
        nowt.convert(nn.Sequential(nn.ConvTranspose2d(4, 4, 3)), "dfa", conv_feedback="kernel")
    with pytest.raises(ValueError, match="storage 'seeded'"):
        nowt.convert(nn.Sequential(nn.Conv2d(4, 4, 3)), "dfa", conv_feedback="kernel", storage="seeded")
    with pytest.raises(ValueError, match="conv_feedback"):
        nowt.convert(nn.Sequential(nn.Conv2d(4, 4, 3)), "dfa", conv_feedback="spread")


@pytest.mark.parametrize("conv", [nn.Conv1d(3, 4, 3, stride=2, padding=2, dilation=2),
                                  nn.Conv3d(2, 3, (1, 3, 2), stride=(1, 2, 1), padding=(0, 1, 1))])
def test_kernel_conv_feedback_spreads_e_in_any_dimension(conv):
    """1-d and 3-d: the folded spread (e @ B, then a depthwise pass) equals e repeated at every output
    position and sent back through the convolution's input gradient with B in W's place."""
    model = nowt.convert(nn.Sequential(nn.Tanh(), conv.double(), nn.Flatten()), "dfa", seed=0,
                         conv_feedback="kernel")
    layer = model[1]
    x = torch.randn(2, conv.in_channels, *([5] * (conv.weight.dim() - 2)), dtype=D, requires_grad=True)
    out = model(x)
    e = torch.randn(out.shape, dtype=D)
    out.backward(e)
    b = layer.feedback  # n_out x in_channels x kernel, n_out = the flattened output's width
    with torch.no_grad():
        y = conv(torch.tanh(x))
        spread = e.view(2, -1, *[1] * (y.dim() - 2)).expand(2, e.shape[1], *y.shape[2:])
        want = torch.ops.aten.convolution_backward(
            spread.contiguous(), torch.tanh(x), b, None, list(conv.stride), list(conv.padding),
            list(conv.dilation), False, [0] * (y.dim() - 2), 1, [True, False, False])[0]
    torch.testing.assert_close(x.grad, want * (1 - torch.tanh(x) ** 2))
