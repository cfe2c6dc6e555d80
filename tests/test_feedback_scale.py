"""Random feedback at the model's own scale (issue 27 item 2): `init="match"` (convert's default) draws B at
each W's spread, `nowt train` keeps the fan-in scale its recipes ran at, and `nowt.check_feedback_scale`
names a layer whose error is orders of magnitude off backprop's."""

import copy
import hashlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nowt
from nowt.train.config import TrainConfig
from nowt.train.factories import build_model

RANDOM = ["fa", "kp", "wm"]


def mlp_ln(d: int = 64, depth: int = 12, classes: int = 10) -> nn.Sequential:
    """Stands in for the models whose own init is N(0, 0.02) with a norm after each product (torchvision's
    maxvit_t, timm's convnextv2 / repvit): 12 Linear-LayerNorm-GELU layers. LayerNorm's backward divides
    by the spread of W x, so B drawn k times wider than W multiplies the error by about k per layer."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(d, d), nn.LayerNorm(d), nn.GELU()]
    return _normal_002(nn.Sequential(*layers, nn.Linear(d, classes)))


class Block(nn.Module):
    """A pre-norm transformer block (attention and MLP on a residual stream)."""

    def __init__(self, d: int, heads: int = 4) -> None:
        super().__init__()
        self.ln1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ln2, self.fc1, self.fc2 = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = x + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """Stands in for ViT-style models initialised with trunc_normal(0.02) (HF GPT-2 / Llama / OPT, timm's
    ViTs, torchvision's swin_v2 / maxvit): a patch embedding, 12 pre-norm blocks, a final norm and a head."""

    def __init__(self, d: int = 64, depth: int = 12, classes: int = 10, patch: int = 16, tokens: int = 16):
        super().__init__()
        self.embed, self.pos = nn.Linear(patch, d), nn.Parameter(torch.randn(1, tokens, d) * 0.02)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, classes)
        _normal_002(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x) + self.pos)).mean(1))


def _normal_002(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return model


def _grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return float(torch.stack([p.grad.norm() for n, p in model.named_parameters()
                              if p.grad is not None and "feedback" not in n]).norm())


@pytest.mark.parametrize("rule", RANDOM)
@pytest.mark.parametrize("make, shape", [(mlp_ln, (32, 64)), (TinyViT, (32, 16, 16))])
def test_default_scale_explodes_on_002_models_and_match_keeps_backprops(rule, make, shape):
    base, x = make(), torch.randn(shape)
    y = torch.randint(0, 10, (shape[0],))
    bp = _grad_norm(copy.deepcopy(base), x, y)
    fixed = nowt.convert(copy.deepcopy(base), rule, seed=0, init="kaiming_uniform")
    assert _grad_norm(fixed, x, y) > 100 * bp  # 1.8e6x (MLP), 6e9x (ViT) measured
    with pytest.warns(UserWarning, match=r"check_feedback_scale: the gradient reaching '[\w.]+' \(" + rule):
        ratios = nowt.check_feedback_scale(fixed, F.cross_entropy, x, y)
    assert max(ratios.values()) > 100
    matched = nowt.convert(copy.deepcopy(base), rule, seed=0)  # the default: init="match"
    assert 0.1 < _grad_norm(matched, x, y) / bp < 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratios = nowt.check_feedback_scale(matched, F.cross_entropy, x, y)
    assert all(0.1 < r < 10 for r in ratios.values()), ratios


def _zoo() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 60), nn.Linear(60, 50), nn.Conv2d(3, 16, 5),
                          nn.ConvTranspose2d(16, 8, 3), nn.MultiheadAttention(32, 4))
    with torch.no_grad():
        for i, p in enumerate(p for n, p in model.named_parameters() if "weight" in n):
            p.mul_(0.1 * 3**i)  # spreads from 0.1x to 8x PyTorch's own
    return model


@pytest.mark.parametrize("rule", RANDOM + ["frsf"])
def test_match_draws_b_with_each_layers_own_std(rule):
    model = nowt.convert(_zoo(), rule, seed=0)
    layers = nowt.feedback_layers(model)
    assert len(layers) == 6  # 2 Linear, 2 conv, attention's in_proj and out_proj
    for name, layer in layers.items():
        w = layer.weight.detach()
        b = layer.feedback_magnitude if rule == "frsf" else layer.feedback.detach()
        s = float(w.std(correction=0))
        assert layer.feedback_std == pytest.approx(s)
        # a uniform's sample spread: relative error sqrt(0.2 / n); 4 of those
        rms = float(b.square().mean().sqrt())
        assert abs(rms / s - 1) < 4 * (0.2 / w.numel()) ** 0.5, (name, rms, s)
        assert float(b.abs().max()) <= 3**0.5 * s * (1 + 1e-6)  # U(-sqrt(3) s, sqrt(3) s)


@pytest.mark.parametrize("rule", ["fa", "kp", "wm", "frsf", "brsf"])
def test_a_zero_initialised_layer_falls_back_to_the_fan_in_default(rule):
    def make() -> nn.Sequential:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 10))
        nn.init.zeros_(model[2].weight)  # a zero-initialised head
        return model

    matched = nowt.convert(make(), rule, seed=1)
    fan_in = nowt.convert(make(), rule, seed=1, init="kaiming_uniform")
    assert matched[2].feedback_std == 0.0
    state = fan_in[2].state_dict()
    for k, v in matched[2].state_dict().items():
        if k == "magnitude_std":  # brsf keeps the spread it draws at: 0, the fan-in default
            assert v == 0.0 and k not in state
            continue
        assert torch.equal(v, state[k]), k
    assert not torch.equal(matched[0].feedback, fan_in[0].feedback)  # W non-zero: matched (rescaled)


# sha256 of the feedback tensors of build_model(TrainConfig(rule=..., model=..., seed=7)) before init="match"
# existed (computed at commit 447b50f): `nowt train` must keep drawing exactly these.
TRAIN_CONFIG_FEEDBACK = {("fa", "mlp"): "622bf562ae2d91ac", ("fa", "convnet"): "22d12a8780472dcd",
                         ("kp", "mlp"): "622bf562ae2d91ac", ("wm", "mlp"): "622bf562ae2d91ac",
                         ("frsf", "mlp"): "a52436fd882540b6", ("brsf", "mlp"): "2a7edff0b3697183"}


@pytest.mark.parametrize("rule, model", list(TRAIN_CONFIG_FEEDBACK))
def test_train_config_feedback_is_bit_identical_to_before_match(rule, model):
    shape = (784,) if model == "mlp" else (3, 32, 32)
    built = build_model(TrainConfig(rule=rule, model=model, seed=7), shape, 10)
    tensors = [t for n, t in built.state_dict().items() if "feedback" in n and t.is_floating_point()]
    digest = hashlib.sha256(b"".join(t.detach().contiguous().numpy().tobytes() for t in tensors)).hexdigest()
    assert digest[:16] == TRAIN_CONFIG_FEEDBACK[(rule, model)]
    assert all(layer.rule.init == "kaiming_uniform" for layer in nowt.feedback_layers(built).values())


def test_check_feedback_scale_changes_nothing_and_reads_the_error_at_each_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 8),
                          nn.ReLU(), nn.Linear(8, 3))
    nowt.convert(model, "brsf", seed=0, exclude=["0"])
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    F.cross_entropy(model(x), y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    rng = torch.get_rng_state()
    ratios = nowt.check_feedback_scale(model, F.cross_entropy, x, y)
    assert list(ratios) == ["4", "6"]  # the bp layer is left out
    assert ratios["6"] == pytest.approx(1.0)  # the output layer's error is the loss's, alike in both
    for n, p in model.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    assert torch.equal(torch.get_rng_state(), rng)
    with pytest.raises(ValueError, match="no layer trained by a rule other than bp"):
        nowt.check_feedback_scale(nowt.convert(nn.Linear(2, 2), "bp"), F.mse_loss, torch.randn(1, 2),
                                  torch.randn(1, 2))


def test_check_feedback_scale_reports_a_nan_gradient():
    model = nowt.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), "fa", seed=0)
    with torch.no_grad():
        model[2].feedback.fill_(float("nan"))
    with pytest.warns(UserWarning, match=r"'0' \(fa\) infx"):
        ratios = nowt.check_feedback_scale(model, F.cross_entropy, torch.randn(3, 4), torch.tensor([0, 1, 0]))
    assert ratios["0"] == float("inf")


def test_brsf_under_match_draws_what_the_saved_model_drew_after_a_state_dict_round_trip():
    """brsf redraws |R| every batch at W's spread at conversion: that spread is saved with the state, so a
    model loaded into another conversion (its own W's spread) draws the same magnitudes."""
    import nowt

    def model(seed):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
        return nowt.convert(net, "brsf", seed=0)

    x, y = torch.randn(4, 6), torch.tensor([0, 1, 2, 0])
    a, b = model(0), model(1)
    assert a[0].magnitude_std != b[0].magnitude_std  # each conversion measured its own W
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        torch.nn.functional.cross_entropy(m(x), y).backward()
    assert torch.equal(a[0].weight.grad, b[0].weight.grad) and torch.equal(a[0].feedback, b[0].feedback)
