"""Cheon, Lee, Paik 2024: the network and the noise phase, shared by `cheon2024` and `cheon2024-conditions`.

The registered noise phase (`REGISTERED`, fixed 2026-12-03 before it was run) is the paper's protocol as our
notes (../shared/papers.md) state it, and where the paper is silent, the same lab's code
(github.com/cogilab/Random2: `random_train`, its MLP's `Linear`, its demo), read for its habits:

- from the paper: every batch fresh inputs x ~ N(0, I) and fresh labels uniform on 0..9, independent of x;
  a 784-100-10 ReLU network with a softmax cross-entropy loss trained by feedback alignment; alignment as
  the per-neuron angle between the rows of W^T and B (`nowt.noise_measures.neuron_angles`), ~90 untrained.
- from the lab's code, where the paper is silent: SGD lr 0.01, momentum 0.9, weight decay 0.01; batch 256;
  5 noise epochs of 50,000 images (`num_image // batch_size` = 195 steps each: 975 steps); forward and
  feedback weights drawn from He's normal, N(0, 2 / fan_in), and biases at zero (its `Linear`).
- chosen by nowt: no BatchNorm. The lab's MLP puts a BatchNorm1d after every ReLU, but that code serves a
  later paper and the NeurIPS paper states its network as 784-100-10 ReLU; BatchNorm is tested as a
  condition in `cheon2024-conditions`. The angle is reported at the end of the noise phase (the paper
  shows it after noise training), with the lowest angle along the way beside it.

Every run goes through `nowt.train.RuleLearner.train_step`, the training step `nowt.train` uses on data.
nowt's pool variant (`pool`: a fixed set of noise examples trained on pass after pass, `nowt.pretrain_noise`'s
default) is nowt's own method, not the paper's protocol.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from nowt.conversion import convert
from nowt.layers import feedback_layers
from nowt.metrics import weight_angles
from nowt.noise import noise_batches
from nowt.noise_measures import effective_ranks, mean_neuron_angles
from nowt.train import RuleLearner, TrainConfig

INITS = ("he", "torch")


@dataclass(frozen=True)
class NoiseRecipe:
    """A network and its noise phase. `init`: "he" (W and B ~ N(0, 2 / fan_in), biases 0: the lab's code)
    or "torch" (nn.Linear's default, B drawn the same way: nowt's default). `train_hidden`: False freezes
    every layer below the readout (only the readout learns). `loss`: "ce" (softmax cross-entropy) or "bce"
    (a sigmoid per class against the one-hot label). `pool`: None draws fresh noise every batch (the
    paper); a number, nowt's pool variant. `labels`: "random" (the paper) or "uniform" (every target the
    uniform distribution over the classes, the lab's code's `uniform_label` option: no label noise)."""

    hidden: tuple[int, ...] = (100,)
    init: str = "he"
    batch_norm: bool = False
    bias: bool = True
    loss: str = "ce"
    noise: str = "gaussian"
    mean: float = 0.0
    std: float = 1.0
    pool: int | None = None
    steps: int = 975
    batch_size: int = 256
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.01
    train_hidden: bool = True
    labels: str = "random"
    readout_scale: float = 1.0  # the readout's initial W times this (B unchanged): larger initial logits

    def changed(self, **changes) -> NoiseRecipe:
        return replace(self, **changes)

    def asdict(self) -> dict:
        return asdict(self)


#: The paper's protocol (see the module docstring): the registered noise phase.
REGISTERED = NoiseRecipe()
#: nowt's pool variant (not the paper's protocol): the registered recipe on a fixed pool of 6,400 examples.
POOL_VARIANT = REGISTERED.changed(pool=6400)


def network(
    hidden: tuple[int, ...],
    rule: str,
    seed: int,
    *,
    init: str = "he",
    batch_norm: bool = False,
    bias: bool = True,
) -> nn.Module:
    """784-hidden-10 ReLU MLP converted to `rule`. One seed gives the same forward weights under every rule
    and the same B under every feedback rule (W and B come from separate generators)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose {' or '.join(INITS)}")
    torch.manual_seed(seed)
    sizes = [784, *hidden]
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()] + ([nn.BatchNorm1d(b)] if batch_norm else [])
    fixed = {"init": "kaiming_uniform"} if rule in ("fa", "kp", "wm", "frsf", "brsf") else {}  # B as run
    model = convert(nn.Sequential(*layers, nn.Linear(sizes[-1], 10, bias=bias)), rule, seed=seed, **fixed)
    if init == "he":
        weights, feedback = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 10**6)
        with torch.no_grad():
            for layer in feedback_layers(model).values():
                std = math.sqrt(2 / layer.weight.shape[1])
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=weights) * std)
                if layer.bias is not None:
                    layer.bias.zero_()
                if "feedback" in dict(layer.named_buffers(recurse=False)):  # a bp layer's B is its W
                    layer.feedback.copy_(torch.randn(layer.feedback.shape, generator=feedback) * std)
    return model


def noise_model(recipe: NoiseRecipe, seed: int) -> nn.Module:
    model = network(
        recipe.hidden, "fa", seed, init=recipe.init, batch_norm=recipe.batch_norm, bias=recipe.bias
    )
    if recipe.readout_scale != 1.0:
        with torch.no_grad():
            list(feedback_layers(model).values())[-1].weight.mul_(recipe.readout_scale)
    return model


def carried(model: nn.Module) -> list[str]:
    """The layers whose B carries an error: every rule-trained layer but the first."""
    return list(feedback_layers(model))[1:]


def alignment(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per-neuron angle (mean over the layer's input units of the angle between row i of W^T and row i of
    B, the paper's) and whole-matrix angle (between B and W as flat vectors) of every layer in `carried`."""
    layers = carried(model)
    neuron, whole = mean_neuron_angles(model), weight_angles(model)
    return {"neuron": {k: neuron[k] for k in layers}, "matrix": {k: whole[k] for k in layers}}


def learner(model: nn.Module, recipe: NoiseRecipe, seed: int) -> RuleLearner:
    cfg = TrainConfig(
        rule="fa",
        hidden=recipe.hidden,
        loss=recipe.loss,
        optimizer=recipe.optimizer,
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        batch_size=recipe.batch_size,
        lr_schedule="constant",
        epochs=1,
        seed=seed,
    )
    return RuleLearner(model, cfg, max(recipe.steps, 1))


def noise_phase(
    recipe: NoiseRecipe, seed: int, *, model: nn.Module | None = None, log_every: int = 25
) -> tuple[nn.Module, dict]:
    """Trains `model` (default `noise_model(recipe, seed)`) on noise by FA through `RuleLearner`; returns
    it and the record {"recipe", "seed", "history": [{"step", "loss", "neuron", "matrix"}, ...] every
    `log_every` steps, "rank_before", "rank_after", "seconds"}. Noise and labels come from their own
    generator seeded with `seed`."""
    model = noise_model(recipe, seed) if model is None else model
    if not recipe.train_hidden:
        for layer in list(feedback_layers(model).values())[:-1]:
            for p in layer.parameters():
                p.requires_grad_(False)
    batches = noise_batches(
        (1, 28, 28),
        10,
        batch_size=recipe.batch_size,
        noise=recipe.noise,
        mean=recipe.mean,
        std=recipe.std,
        pool=recipe.pool,
        generator=torch.Generator().manual_seed(seed),
    )
    if recipe.labels not in ("random", "uniform") or (recipe.labels == "uniform" and recipe.loss != "ce"):
        raise ValueError(f"labels {recipe.labels!r} with loss {recipe.loss!r}: random, or uniform with ce")
    learn = learner(model, recipe, seed)
    start = time.perf_counter()
    history = [{"step": 0, "loss": math.nan, **alignment(model)}]
    rank_before = effective_ranks(model)
    losses: list[float] = []
    model.train()
    for step in range(1, recipe.steps + 1):
        x, y = next(batches)
        if recipe.labels == "uniform":  # soft targets 1/10 (cross_entropy takes class probabilities)
            y = torch.full((len(y), 10), 0.1)
        losses.append(float(learn.train_step(x, y)["loss"]))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"noise phase diverged at step {step} ({recipe})")
        if step % log_every == 0 or step == recipe.steps:
            history.append({"step": step, "loss": sum(losses) / len(losses), **alignment(model)})
            losses = []
    for p in model.parameters():
        p.requires_grad_(True)
    return model, {
        "recipe": recipe.asdict(),
        "seed": seed,
        "history": history,
        "rank_before": rank_before,
        "rank_after": effective_ranks(model),
        "seconds": time.perf_counter() - start,
    }


def same_recipe(saved: dict, recipe: NoiseRecipe) -> bool:
    """Whether a saved recipe is `recipe`; fields added since it was saved count at their defaults."""
    filled = {**NoiseRecipe().asdict(), **saved}
    return json.loads(json.dumps(filled)) == json.loads(json.dumps(recipe.asdict()))


def readout_angles(record: dict, kind: str = "neuron") -> list[float]:
    """The readout layer's angle at every record of a noise phase's history."""
    return [list(r[kind].values())[-1] for r in record["history"]]
