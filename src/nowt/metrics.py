"""Diagnostics: angles between feedback and forward weights, and between a rule's updates and backprop's."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt import distributed
from nowt.layers import feedback_layers, feedback_rules


def row_angles(a: Tensor, b: Tensor) -> Tensor:
    """Degrees between corresponding rows of two [n, d] tensors (nan for a zero row), in float64."""
    a, b = a.detach().double(), b.detach().double()
    u, v = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)  # a zero row gives nan
    # 2 atan2(|u - v|, |u + v|) is exact near 0 and 180 degrees, where acos of the cosine is not.
    return torch.rad2deg(2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1)))


def angle(a: Tensor, b: Tensor) -> float:
    """Degrees between two tensors seen as flat vectors (nan if either is zero)."""
    return float(row_angles(a.reshape(1, -1), b.reshape(1, -1))[0])


def alignment_pairs(model: nn.Module) -> dict[str, tuple[Tensor | None, Tensor | None]]:
    """{layer name: (B, the matrix backprop uses in B's place)} for every rule-trained layer, in layer order,
    as each layer's rule defines the pair (`Rule.alignment_pairs`); None where a matrix is undefined."""
    pairs: dict[str, tuple[Tensor | None, Tensor | None]] = {}
    for rule in feedback_rules(model):
        pairs.update(rule.alignment_pairs(model))
    return {name: pairs[name] for name in feedback_layers(model) if name in pairs}


def weight_angles(model: nn.Module) -> dict[str, float]:
    """{layer name: degrees between the feedback matrix B and the forward weight W}; 0 for `bp` layers.

    nan for a layer that never ran while the model did (`nowt.convert`'s first-forward check): its B
    carried nothing. A rule may compare B with another reference: dfa and ifa layers compare it with what
    backprop would send instead, the product of the downstream forward weights; nan where that is undefined.
    """
    return _per_pair(model, angle)


def weight_norm_ratios(model: nn.Module) -> dict[str, float]:
    """{layer name: ||B|| / ||W||, Frobenius norms}: the scale of the feedback against the matrix backprop
    uses in its place (the pairs `weight_angles` compares, so for dfa and ifa the product of the downstream
    forward weights); 1 for `bp` layers; nan where either is undefined or W is zero. An angle near 0 with a
    ratio far from 1 still sends the error back too strong or too weak."""
    return _per_pair(model, _norm_ratio)


def _norm_ratio(fb: Tensor, ref: Tensor) -> float:
    scale = float(ref.detach().float().norm())  # W requires grad: a float() of it would warn
    return math.nan if scale == 0 else float(fb.detach().float().norm()) / scale


def _per_pair(model: nn.Module, measure: Callable[[Tensor, Tensor], float]) -> dict[str, float]:
    """`measure(B, reference)` per layer of `alignment_pairs`; nan where a matrix is undefined or the layer
    never ran while the model did (`nowt.convert`'s first-forward check: its B carried nothing)."""
    layers = feedback_layers(model)
    never_ran = {name for name, m in layers.items() if m.skipped and m.last_input_shape is None}
    return {name: (math.nan if fb is None or ref is None or name in never_ran else measure(fb, ref))
            for name, (fb, ref) in alignment_pairs(model).items()}


@contextmanager
def backprop_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block every rule-trained layer of `model` computes exact backprop gradients."""
    layers = list(feedback_layers(model).values())
    for layer in layers:
        layer.backprop_only = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.backprop_only = False


@contextmanager
def shape_pass(model: nn.Module) -> Iterator[nn.Module]:
    """For a forward pass that only shows the rules each layer's input shape (the weight mirror drives noise
    of it): eval mode and plain ops, so no dropout or brSF draw and no batch-norm statistics come of it; the
    model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        with backprop_mode(model):
            yield model
    finally:
        model.train(was_training)


def cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices whose RNG a pass of `model` may draw from: the current one and each that holds a
    parameter or buffer (a model placed on cuda:1 draws its dropout masks there, not on the current one)."""
    if not torch.cuda.is_available():
        return []
    held = {t.device.index for t in (*model.parameters(), *model.buffers()) if t.device.type == "cuda"}
    return sorted(held | {torch.cuda.current_device()})


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Restores the model's buffers (batch-norm statistics, redrawn feedback, draw counters) and the RNG."""
    saved = {name: b.clone() for name, b in model.named_buffers()}
    shapes = {layer: layer.last_input_shape for layer in feedback_layers(model).values()}
    with torch.random.fork_rng(devices=cuda_devices(model)):
        try:
            yield
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name in saved:
                        b.copy_(saved[name])
            for layer, shape in shapes.items():  # the mirror drives noise of the last training input's shape
                layer.last_input_shape = shape


def update_angles(
    model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, targets: Tensor
) -> dict[str, float]:
    """{layer name: degrees between the rule's weight update and the true backprop gradient} on one batch.

    Both passes see the same batch, dropout masks and buffers; the model, its buffers and its `.grad`s
    are left exactly as they were.
    """
    layers = feedback_layers(model)
    if not layers:
        raise ValueError("update_angles: the model has no converted layers; call nowt.convert(model, rule) "
                         "first")
    # what the optimizer updates: a parametrized or computed `.weight` is a new tensor at every access, so
    # a gradient taken with respect to one read before the forward is None
    leaves = [layer.leaf_weights() for layer in layers.values()]

    def grads() -> list[Tensor | None]:
        rng = torch.get_rng_state()
        with preserved_state(model):
            torch.set_rng_state(rng)
            loss = loss_fn(model(inputs), targets)
            flat = iter(torch.autograd.grad(loss, [w for ws in leaves for w in ws], allow_unused=True))
            parts = [[next(flat) for _ in ws] for ws in leaves]
            return [None if any(g is None for g in gs) else torch.cat([g.reshape(-1) for g in gs])
                    for gs in parts]

    rule_grads = grads()
    with backprop_mode(model):
        true_grads = grads()
    return {name: (angle(g, t) if g is not None and t is not None else math.nan)
            for name, g, t in zip(layers, rule_grads, true_grads, strict=True)}


@torch.no_grad()
def output_collapsed(model: nn.Module, inputs: Tensor) -> bool:
    """Whether `model` (in eval mode) gives exactly one output for every row of `inputs`: its units no
    longer tell inputs apart, as when every ReLU of a layer is dead. Distinct inputs through a live network
    never give bit-identical outputs, so this does not fire on a network that is merely bad."""
    if len(inputs) < 2:
        raise ValueError(f"output_collapsed needs at least 2 inputs, got {len(inputs)}")
    was_training = model.training
    model.eval()
    out = model(inputs)
    model.train(was_training)
    out = out.flatten(1)
    return bool((out == out[:1]).all())


def as_tokens(out: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """A sequence model's outputs [N, T, V] (vocabulary last) and targets [N, T] as one row per token,
    [N * T, V] and [N * T]; any other outputs and targets as they are."""
    if out.dim() == 3 and y.dim() == 2 and out.shape[:2] == y.shape:
        return out.flatten(0, 1), y.flatten()
    return out, y


@torch.no_grad()
def evaluate(
    model: nn.Module, loader, loss_fn=F.cross_entropy, device: str | torch.device | None = None
) -> dict[str, float]:
    """Mean loss, top-1 accuracy and top-1/top-5 error (%) of `model` on the (inputs, labels) batches of
    `loader`, in eval mode (the model's mode is restored). Sequence outputs [N, T, V] with targets [N, T]
    count per token, and add `bpc`: the mean cross-entropy per token in bits (nats / ln 2).

    Under torchrun, a loader that gives each rank its part of every batch (`nowt.train.make_loader`'s) is
    scored in parts, summed over ranks: every rank must call this; any other loader is scored whole."""
    was_training = model.training
    model.eval()
    parts = distributed.loads_parts(loader)
    total, loss, top1, top5, nats, sequence = 0, 0.0, 0, 0, 0.0, False
    for x, y in distributed.rank_batches(loader) if parts else loader:
        if len(y) == 0:  # a rank's empty part of a batch smaller than the world
            continue
        if device is not None:
            x, y = x.to(device), y.to(device)
        out = model(x)
        sequence = out.dim() == 3 and y.dim() == 2
        out, y = as_tokens(out, y)
        if sequence:
            nats += float(F.cross_entropy(out.float(), y, reduction="sum"))
        loss += float(loss_fn(out, y)) * len(y)
        best = out.topk(min(5, out.shape[1]), dim=1).indices
        top1 += int((best[:, 0] == y).sum())
        top5 += int((best == y[:, None]).any(1).sum())
        total += len(y)
    model.train(was_training)
    if parts:
        sums = distributed.all_reduce_sum_(torch.tensor([total, loss, top1, top5, nats, sequence],
                                                        dtype=torch.float64)).tolist()
        total, top1, top5, sequence = int(sums[0]), int(sums[2]), int(sums[3]), sums[5] > 0
        loss, nats = sums[1], sums[4]
    bpc = {"bpc": nats / total / math.log(2)} if sequence else {}
    return {"loss": loss / total, "accuracy": 100.0 * top1 / total,
            "top1_error": 100.0 * (total - top1) / total, "top5_error": 100.0 * (total - top5) / total, **bpc}
