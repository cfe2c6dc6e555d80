"""Each rule's gradients on layer configurations the small-network tests do not reach (grouped, depthwise,
dilated, strided, explicitly padded and transposed convolutions; Linear on N-d inputs; attention with other
key/value widths; a layer used twice; bf16 autocast), against hand computations with plain autograd: the
input gets the op's input gradient with W replaced by the rule's B, W and b their true gradients."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nowt
from nowt.lc import LocallyConnected2d

D = torch.double
RULES = ["fa", "usf", "frsf", "brsf", "kp", "wm"]


def rule_b(layer, rule, w):
    """The matrix the rule's definition says carries the error, from W as it was at the forward."""
    if rule == "usf":
        return torch.copysign(w.abs().mean().expand_as(w), w)
    if rule == "frsf":
        return torch.copysign(layer.feedback_magnitude, w)
    fb = layer.feedback.detach()  # fa, kp, wm: the stored B; brsf: the one drawn at this forward
    if rule == "brsf":
        assert torch.equal(torch.sign(fb), torch.sign(w)) and (fb.abs() > 0).all()
    return fb


def through(f, x, w, b_matrix, bias):
    """f(x, W, bias) whose input gradient goes through `b_matrix` in W's place (W's own is the true one)."""
    z = f(x, b_matrix, None)
    return f(x.detach(), w, bias) + z - z.detach()


def _conv(m, output_size=None):
    """m's own forward as a function of (x, W, b), explicit padding included."""
    d = len(m.kernel_size)
    if m.transposed:
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[d - 1]

        def transposed(x, w, b):
            pad = m.output_padding if output_size is None else m._output_padding(
                x, output_size, list(m.stride), list(m.padding), list(m.kernel_size), d, list(m.dilation))
            return fn(x, w, b, m.stride, m.padding, pad, m.groups, m.dilation)
        return transposed
    fn = (F.conv1d, F.conv2d, F.conv3d)[d - 1]
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
        return lambda x, w, b: fn(F.pad(x, m._reversed_padding_repeated_twice, mode=mode), w, b, m.stride, 0,
                                  m.dilation, m.groups)
    return lambda x, w, b: fn(x, w, b, m.stride, m.padding, m.dilation, m.groups)


def _linear(m):
    return lambda x, w, b: F.linear(x, w, b)


def _lc(m):
    oh, ow = m.output_size

    def f(x, w, b):
        cols = F.unfold(x, m.kernel_size, padding=m.padding, stride=m.stride)  # (N, K, L)
        out = torch.einsum("nkl,lok->nol", cols, w.view(oh * ow, m.out_channels, -1))
        return out.reshape(x.shape[0], m.out_channels, oh, ow) + (0 if b is None else b)
    return f


CONFIGS = {  # name: (layer, input shape, its forward as f(x, W, b))
    "conv1d g2 d2 s3": (lambda: nn.Conv1d(4, 6, 3, stride=3, padding=2, dilation=2, groups=2), (2, 4, 14),
                        _conv),
    "conv2d depthwise s2 odd": (lambda: nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=4), (2, 4, 7, 6),
                                _conv),
    "conv2d depthwise x2 nobias": (lambda: nn.Conv2d(3, 6, (3, 2), stride=(2, 3), groups=3, bias=False),
                                   (2, 3, 8, 8), _conv),
    "conv2d same even k d2": (lambda: nn.Conv2d(2, 3, 4, padding="same", dilation=2), (2, 2, 7, 8), _conv),
    "conv2d same reflect": (lambda: nn.Conv2d(2, 3, 3, padding="same", padding_mode="reflect"), (2, 2, 5, 6),
                            _conv),
    "conv2d same circular g2": (lambda: nn.Conv2d(2, 4, (2, 4), padding="same", padding_mode="circular",
                                                  groups=2), (2, 2, 5, 6), _conv),
    "conv2d replicate g2 d2": (lambda: nn.Conv2d(4, 2, 3, padding=1, dilation=2, padding_mode="replicate",
                                                 groups=2), (2, 4, 7, 7), _conv),
    "conv2d reflect s3": (lambda: nn.Conv2d(2, 2, 3, stride=3, padding=2, padding_mode="reflect"),
                          (1, 2, 8, 9), _conv),
    "conv3d g2 d s": (lambda: nn.Conv3d(2, 4, (2, 2, 3), stride=(2, 1, 2), dilation=(1, 2, 1), groups=2,
                                        padding=(1, 0, 1)), (2, 2, 5, 6, 6), _conv),
    "convT1d g3 d2 s3 op2": (lambda: nn.ConvTranspose1d(6, 3, 3, stride=3, padding=1, output_padding=2,
                                                        groups=3, dilation=2), (2, 6, 5), _conv),
    "convT2d g2 s d op": (lambda: nn.ConvTranspose2d(4, 6, (3, 2), stride=(2, 3), padding=(1, 0),
                                                     output_padding=(1, 2), groups=2, dilation=(2, 3)),
                          (2, 4, 4, 3), _conv),
    "convT2d depthwise nobias": (lambda: nn.ConvTranspose2d(3, 3, 3, stride=2, groups=3, bias=False),
                                 (2, 3, 3, 4), _conv),
    "convT3d g2 op1": (lambda: nn.ConvTranspose3d(2, 4, 2, stride=2, output_padding=1, groups=2),
                       (1, 2, 2, 3, 2), _conv),
    "conv2d unbatched": (lambda: nn.Conv2d(3, 4, 3, padding=1), (3, 5, 6), _conv),
    "conv1d unbatched reflect": (lambda: nn.Conv1d(2, 4, 3, padding=1, padding_mode="reflect"), (2, 6),
                                 _conv),
    "convT2d unbatched": (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (3, 3, 4), _conv),
    "linear 3d": (lambda: nn.Linear(5, 4), (2, 3, 5), _linear),
    "linear 4d nobias": (lambda: nn.Linear(5, 4, bias=False), (2, 3, 2, 5), _linear),
    "linear 1d": (lambda: nn.Linear(5, 4), (5,), _linear),
    "lc s2 p1": (lambda: LocallyConnected2d(2, 3, 3, stride=2, padding=1, input_size=(7, 6)), (2, 2, 7, 6),
                 _lc),
    "lc rect nobias": (lambda: LocallyConnected2d(2, 3, (2, 3), stride=(1, 2), input_size=(5, 7), bias=False),
                       (2, 2, 5, 7), _lc),
}
LAYOUTS = {"channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
           "transposed view": lambda x: x.transpose(-1, -2)}


def _check_layer(make, shape, forward, rule, layout=None, call=None, dtype=D, tol=1e-10):
    m = make().to(dtype)
    w, bias = m.weight.detach().clone(), None if m.bias is None else m.bias.detach().clone()
    layer = nowt.convert(copy.deepcopy(m), rule, seed=0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = layer(x if layout is None else layout(x), **(call or {}))
    g = torch.randn_like(y)
    y.backward(g)
    f = forward(m, **({"output_size": call["output_size"]} if call else {}))
    fx = f if layout is None else (lambda a, ww, bb: f(layout(a), ww, bb))
    ref_x = x.detach().clone().requires_grad_()
    ref_w = w.clone().requires_grad_()
    ref_b = None if bias is None else bias.clone().requires_grad_()
    out = through(fx, ref_x, ref_w, rule_b(layer, rule, w), ref_b)
    out.backward(g)
    torch.testing.assert_close(y, out, rtol=tol, atol=tol)
    torch.testing.assert_close(x.grad, ref_x.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(layer.weight.grad, ref_w.grad, rtol=tol, atol=tol)
    if bias is not None:
        torch.testing.assert_close(layer.bias.grad, ref_b.grad, rtol=tol, atol=tol)
    if rule == "kp":
        assert torch.equal(layer.feedback.grad, layer.weight.grad)
    ref_bp = x.detach().clone().requires_grad_()
    fx(ref_bp, w, bias).backward(g)
    assert not torch.allclose(x.grad, ref_bp.grad)  # B really is not W
    return layer


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_layer_configs_send_the_error_through_b_and_keep_true_weight_gradients(config, rule):
    make, shape, forward = CONFIGS[config]
    _check_layer(make, shape, forward, rule)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_non_contiguous_and_channels_last_inputs(layout, rule):
    make = lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="reflect")  # noqa: E731
    _check_layer(make, (2, 3, 7, 6), _conv, rule, layout=LAYOUTS[layout])


@pytest.mark.parametrize("rule", RULES)
def test_conv_transpose_output_size_and_float32(rule):
    _check_layer(lambda: nn.ConvTranspose2d(2, 3, 3, stride=2), (2, 2, 4, 4), _conv, rule,
                 call={"output_size": [10, 10]})
    _check_layer(lambda: nn.Conv2d(4, 4, 3, stride=2, groups=2), (2, 4, 7, 7), _conv, rule,
                 dtype=torch.float32, tol=1e-5)


@pytest.mark.parametrize("rule", RULES)
def test_first_layer_without_input_gradient_gets_true_weight_and_bias_gradients(rule):
    m = nn.Conv2d(2, 3, 3, stride=2, groups=1).double()
    layer = nowt.convert(copy.deepcopy(m), rule, seed=0)
    x = torch.randn(2, 2, 6, 7, dtype=D)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    m(x).backward(g)
    torch.testing.assert_close(layer.weight.grad, m.weight.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, m.bias.grad, rtol=1e-12, atol=1e-12)


BF16 = {"linear 3d": (lambda: nn.Linear(6, 5), (2, 3, 6), F.linear),
        "conv g2 s2": (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2, padding=1), (2, 4, 7, 7),
                       lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, 2)),
        "convT op1": (lambda: nn.ConvTranspose2d(4, 2, 3, stride=2, output_padding=1), (2, 4, 3, 3),
                      lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 0, 1))}


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("case", list(BF16))
def test_bf16_autocast_gradients_are_the_rules_in_bf16(case, rule):
    make, shape, f = BF16[case]
    m = make()
    layer = nowt.convert(copy.deepcopy(m), rule, seed=0)
    x = torch.randn(shape, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    g = torch.randn_like(y)
    y.backward(g)
    w, b = (m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_())
    xr = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        through(f, xr, w, rule_b(layer, rule, m.weight.detach()), b).backward(g)
    assert x.grad.dtype == layer.weight.grad.dtype == torch.float32
    for got, want in ((x.grad, xr.grad), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad)):
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * float(want.abs().max()))
    if rule == "kp":
        assert torch.equal(layer.feedback.grad, layer.weight.grad)


def _attention_by_hand(m, conv, rule, q, k, v):
    """nn.MultiheadAttention's maths with each projection's input gradient through its B."""
    e, h = m.embed_dim, m.num_heads
    if not m.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))
    if m._qkv_same_embed_dim:
        ws, bs = m.in_proj_weight.chunk(3), rule_b(conv.in_proj, rule, m.in_proj_weight.detach()).chunk(3)
    else:
        ws = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
        bs = [rule_b(getattr(conv, f"{n}_proj"), rule, w.detach()) for n, w in zip("qkv", ws, strict=True)]
    q, k, v = (through(F.linear, t, w, b, bias)
               for t, w, b, bias in zip((q, k, v), ws, bs, m.in_proj_bias.chunk(3), strict=True))
    q, k, v = (t.unflatten(-1, (h, e // h)).transpose(1, 2) for t in (q, k, v))
    o = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(e // h), -1) @ v).transpose(1, 2).flatten(2)
    out = through(F.linear, o, m.out_proj.weight, rule_b(conv.out_proj, rule, m.out_proj.weight.detach()),
                  m.out_proj.bias)
    return out if m.batch_first else out.transpose(0, 1)


ATTENTION = [({}, "self"), ({}, "cross"), ({}, "key is value"), ({"batch_first": True}, "self"),
             ({"batch_first": True}, "key is value"), ({"kdim": 3, "vdim": 5}, "cross"),
             ({"kdim": 3, "vdim": 5, "batch_first": True}, "cross")]


@pytest.mark.parametrize("rule", ["fa", "usf", "frsf", "kp", "wm"])
@pytest.mark.parametrize(("options", "inputs"), ATTENTION)
def test_attention_projections_send_errors_through_b(options, inputs, rule):
    m = nn.MultiheadAttention(4, 2, **options).double()
    conv = nowt.convert(copy.deepcopy(m), rule, seed=0)
    size = (lambda n, d: (2, n, d)) if options.get("batch_first") else (lambda n, d: (n, 2, d))
    q, k, v = (torch.randn(size(n, options.get(f"{c}dim", 4)), dtype=D)
               for n, c in ((3, "q"), (5, "k"), (5, "v")))
    if inputs != "cross" and "vdim" not in options:
        v = k = q if inputs == "self" else k

    def leaves():
        made = {}
        return [made.setdefault(id(t), t.clone().requires_grad_()) for t in (q, k, v)]

    ins, ref = leaves(), leaves()
    out, _ = conv(*ins, need_weights=rule == "fa")  # the written-out and the fused attention paths
    g = torch.randn_like(out)
    out.backward(g)
    _attention_by_hand(m, conv, rule, *ref).backward(g)
    for a, b in zip(ins, ref, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    want = dict(m.named_parameters())
    for name, p in conv.named_parameters():
        if name in want:
            torch.testing.assert_close(p.grad, want[name].grad, rtol=1e-10, atol=1e-12)
        else:  # kp's B: exactly W's gradient
            assert rule == "kp" and torch.equal(p.grad, getattr(conv, name.split(".")[0]).weight.grad)


class _Twice(nn.Module):
    """One layer used twice in a forward (weights shared across time): y = L(tanh(L(x)))."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(torch.tanh(self.layer(x)))


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_a_layer_used_twice_sends_each_use_through_its_b_and_sums_the_weight_gradients(kind, rule):
    m = (nn.Linear(4, 4) if kind == "linear" else nn.Conv2d(3, 3, 3, padding=1)).double()
    f = _linear(m) if kind == "linear" else _conv(m)
    model = nowt.convert(_Twice(copy.deepcopy(m)), rule, seed=0)
    layer, w = model.layer, m.weight.detach()
    if rule == "brsf":  # each use draws its own magnitudes: the first two draws of the layer's seed
        twin = copy.deepcopy(layer)
        bs = [torch.copysign(twin.rule.magnitude(twin), w) for _ in range(2)]
    x = torch.randn((3, 4) if kind == "linear" else (2, 3, 5, 5), dtype=D, requires_grad=True)
    y = model(x)
    if rule != "brsf":
        bs = [rule_b(layer, rule, w)] * 2
    g = torch.randn_like(y)
    y.backward(g)
    wr, br = m.weight.detach().clone().requires_grad_(), m.bias.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    through(f, torch.tanh(through(f, xr, wr, bs[0], br)), wr, bs[1], br).backward(g)
    for got, want in ((x.grad, xr.grad), (layer.weight.grad, wr.grad), (layer.bias.grad, br.grad)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if rule == "kp":
        assert torch.equal(layer.feedback.grad, layer.weight.grad)


@pytest.mark.parametrize("rule", RULES)
def test_gpt2_conv1d_sends_errors_through_b_stored_in_by_out(rule):
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    m = conv1d(4, 5).double()  # y = x W + b, W (in 5, out 4)
    nn.init.normal_(m.bias)
    layer = nowt.convert(copy.deepcopy(m), rule, seed=0)
    x = torch.randn(2, 3, 5, dtype=D, requires_grad=True)
    y = layer(x)
    g = torch.randn_like(y)
    y.backward(g)
    b = rule_b(layer, rule, m.weight.detach())
    assert b.shape == m.weight.shape == (5, 4)
    torch.testing.assert_close(x.grad, g @ b.T, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, x.detach().flatten(0, 1).T @ g.flatten(0, 1))
    torch.testing.assert_close(layer.bias.grad, g.sum((0, 1)))


def _pair_sums(f, x, y, w):
    """sum over every (input, output) pair of y x, per weight entry: the vjp of f(x, W) in W at y."""
    w = w.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(f(x, w, None), w, y)
    return grad


MIRRORED = {name: CONFIGS[name] for name in ("linear 3d", "linear 1d", "conv1d g2 d2 s3",
                                             "conv2d depthwise s2 odd", "convT1d g3 d2 s3 op2", "lc s2 p1")}


@pytest.mark.parametrize(("decay", "activation", "normalize"),
                         [(None, "none", True), (0.5, "none", True), (None, "sigmoid", True),
                          (0.0, "none", False)])
@pytest.mark.parametrize("config", list(MIRRORED))
def test_mirror_step_on_every_op_matches_hand_computation(config, decay, activation, normalize):
    """B <- (1 - decay) B + lr * W_hat, W_hat = the sum of y x over each weight entry's (input, output)
    pairs, over their count times s^2 (normalize), y = W x or act(W x + b) for noise x of std s: by autograd's
    vjp."""
    make, shape, forward = MIRRORED[config]
    m = make().double()
    layer = nowt.convert(copy.deepcopy(m), "wm", seed=0)
    layer(torch.randn(shape, dtype=D))
    b0, s, lr, n = layer.feedback.detach().clone(), 0.3, 0.2, 3
    nowt.mirror(layer, 1, lr=lr, decay=decay, noise_std=s, activation=activation, normalize=normalize,
                batch_size=n, generator=torch.Generator().manual_seed(1))
    batched = (n, *shape[1:]) if len(shape) > 1 else (n, *shape)  # an unbatched Linear: a batch of n
    x = torch.randn(batched, generator=torch.Generator().manual_seed(1), dtype=D) * s
    f, w = forward(m), m.weight.detach()
    y = f(x, w, None)
    if activation == "sigmoid":
        y = torch.sigmoid(f(x, w, m.bias.detach()))
    estimate = _pair_sums(f, x, y, w)
    if normalize:
        estimate = estimate / (_pair_sums(f, torch.ones_like(x), torch.ones_like(y), w).clamp_min(1) * s**2)
    keep = 1 - (lr if decay is None else decay)
    torch.testing.assert_close(layer.feedback.detach(), keep * b0 + lr * estimate, rtol=1e-10, atol=1e-12)


def test_mirror_schedule_runs_on_a_linear_layer_fed_unbatched_inputs():
    # Its last input shape (features,) was read as (batch,): the warm-up and the training mirror steps drew
    # noise of shape (1,) and (3,) and raised "mat1 and mat2 shapes cannot be multiplied".
    model = nowt.convert(nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2)), "wm", seed=0,
                         mirror_warmup=5)
    model(torch.randn(5)).sum().backward()
    rule, before = model[0].rule, model[0].feedback.clone()
    assert rule.warmup_plan(nowt.feedback_layers(model))["0"][1] == 5  # fan-in 5 over 1 position
    rule.begin_training(model, 1)
    rule.after_step(model, rule.mirror_every)
    assert not torch.equal(model[0].feedback, before)

