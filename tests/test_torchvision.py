"""torchvision's transformers as a client would convert them: ViT (nn.MultiheadAttention in each encoder
block) and Swin (window attention calling F.linear on its qkv and proj weights), V1 and V2."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import per_layer_rules
from torch import nn

import nowt

tv = pytest.importorskip("torchvision")

RULES = per_layer_rules(any_model=True)  # every rule that converts any model, read from the registry


def vit(make=tv.models.VisionTransformer, *args, **kwargs) -> nn.Module:
    """torchvision's ViT with its head drawn small: it starts at zero, which would hold the error that
    backprop and usf send back (through W, or sign(W) scaled by mean |W|) at 0 on the first step."""
    model = make(*args, **kwargs)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def tiny_swin(v2: bool = False) -> nn.Module:
    """12x12 images, 2x2 patches: 6x6 tokens in windows of 4, so stage 1 pads to 8x8 and its second block
    shifts (with the attention mask); stage 2 is 3x3 tokens in one padded window."""
    blocks = dict(block=tv.models.swin_transformer.SwinTransformerBlockV2,
                  downsample_layer=tv.models.swin_transformer.PatchMergingV2) if v2 else {}
    return tv.models.SwinTransformer([2, 2], 8, [2, 1], [2, 2], [4, 4], mlp_ratio=2.0,
                                     stochastic_depth_prob=0.0, num_classes=3, **blocks)


TINY = {"vit": (lambda: vit(tv.models.VisionTransformer, 12, 4, 2, 2, 8, 16, num_classes=3), (3, 3, 12, 12)),
        "swin": (tiny_swin, (3, 3, 12, 12)), "swin_v2": (lambda: tiny_swin(v2=True), (3, 3, 12, 12))}


def _expected_layers(model: nn.Module) -> int:
    """Every Linear and convolution becomes one rule-trained layer, and every nn.MultiheadAttention adds
    one more: its packed input projection (its out_proj is one of the Linears)."""
    kinds = (nn.Linear, nn.modules.conv._ConvNd)
    return sum(isinstance(m, kinds) for m in model.modules()) + \
        sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())


def _train_step(model: nn.Module, rule: str, x: torch.Tensor, y: torch.Tensor) -> tuple[float, set[str]]:
    """One SGD step (with the mirror for wm); the loss and the names of the parameters it moved."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    if rule == "wm":
        nowt.mirror(model)
    opt.step()
    return float(loss.detach()), {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("name", list(TINY))
def test_backprop_conversion_computes_torchvisions_outputs_and_gradients(name):
    """Routing Swin's F.linear calls through the converted qkv/proj (V2's key-bias copy included) and
    nowt's attention in place of torch's change nothing under backprop."""
    make, shape = TINY[name]
    torch.manual_seed(0)
    ref = make().double()
    model = nowt.convert(copy.deepcopy(ref), "bp")
    x = torch.randn(shape, dtype=torch.double)
    torch.testing.assert_close(model(x), ref(x))
    for m in (ref, model):
        m(x).square().sum().backward()
    grads = dict(model.named_parameters())
    for n, p in ref.named_parameters():
        torch.testing.assert_close(grads[n].grad, p.grad, msg=n)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("rule", RULES)
def test_every_rule_converts_and_trains_a_step(name, rule):
    make, shape = TINY[name]
    torch.manual_seed(0)
    model = make()
    expected = _expected_layers(model)
    # Swin V2's position-bias MLP reads a fixed table, not the batch: DFA has no error to give it.
    exclude = ["*.cpb_mlp.*"] if (name, rule) == ("swin_v2", "dfa") else []
    nowt.convert(model, rule, seed=0, exclude=exclude)
    layers = nowt.feedback_layers(model)
    assert len(layers) == expected  # excluded layers are backprop layers
    assert not any(type(m) in (nn.Linear, nn.MultiheadAttention) for m in model.modules())
    loss, moved = _train_step(model, rule, torch.randn(shape), torch.tensor([0, 1, 2]))
    assert math.isfinite(loss)
    # every rule layer ran in the forward (none was bypassed by a functional call) and learned
    assert all(layer.last_input_shape is not None for layer in layers.values())
    weights = {n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1}
    assert weights <= moved, weights - moved
    if rule != "dfa":
        assert set(nowt.weight_angles(model)) == set(layers)


@pytest.mark.parametrize("arch", ["vit_b_16", "swin_t"])
@pytest.mark.parametrize("rule", RULES)
def test_full_size_torchvision_models_convert_and_train_a_step(arch, rule):
    torch.manual_seed(0)
    model = (vit(tv.models.vit_b_16, weights=None, image_size=32, num_classes=10) if arch == "vit_b_16" else
             tv.models.swin_t(weights=None, num_classes=10))
    expected = _expected_layers(model)
    nowt.convert(model, rule, seed=0)
    assert len(nowt.feedback_layers(model)) == expected == {"vit_b_16": 50, "swin_t": 53}[arch]
    loss, moved = _train_step(model, rule, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    assert math.isfinite(loss)
    layers = nowt.feedback_layers(model).values()
    assert all(layer.last_input_shape is not None and layer.weight.grad is not None for layer in layers)
    assert len(moved) > 0.9 * len(list(model.parameters()))
