"""Random-noise pretraining (Cheon, Lee & Paik 2024): before seeing data, train the freshly initialised
network on pure noise inputs with labels drawn independently of them, using the network's own learning
rule. The paper draws fresh noise every batch and reports that under feedback alignment this aligns the
forward weights with the fixed feedback weights. In nowt fresh noise does not align an FA readout
(results/cheon2024/); `pretrain_noise`'s default is nowt's pool variant (a fixed set of noise examples
trained on pass after pass), which does: nowt's own method, not the paper's protocol.

    model = nowt.convert(nowt.models.mlp(hidden=(100,)), "fa", seed=0)
    history = nowt.pretrain_noise(model, (1, 28, 28), steps=5000)
    history[-1]["neuron_angles"]   # per-neuron angle between W^T and B, averaged per layer, in degrees
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nowt.layers import feedback_layers, feedback_rules
from nowt.metrics import weight_angles
from nowt.noise_measures import effective_ranks, mean_neuron_angles
from nowt.optim import make_optimizer, rule_step
from nowt.progress import progress_bar

NOISES = ("gaussian", "uniform")


def noise_batches(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    batch_size: int,
    noise: str = "gaussian",
    mean: float = 0.0,
    std: float = 1.0,
    pool: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless (x, y) batches: x of shape [batch_size, *input_shape], y uniform on 0..num_classes-1.

    "gaussian": every entry of x ~ N(0, 1); "uniform": every entry ~ U(-sqrt 3, sqrt 3), which also has
    mean 0 and variance 1, so the two differ only in shape; then scaled by `std` and shifted by `mean`
    (N(mean, std^2), or a flat density of that mean and std). Labels are drawn separately from x, so they
    carry no information about it. Drawn on the CPU with `generator`, so a seed gives the same batches on
    every device. `pool`: draw that many labelled examples once and serve them in a new random order every
    pass (a fixed noise data set the network can memorise); None: fresh noise in every batch.
    """
    if noise not in NOISES:
        raise ValueError(f"unknown noise {noise!r}; choose one of {', '.join(NOISES)}")
    shape = (batch_size, *input_shape)
    if batch_size < 1 or any(int(d) < 1 for d in input_shape):
        raise ValueError(f"batch_size and every input dimension must be positive, got {shape}")
    if num_classes < 2:
        raise ValueError(f"need at least two classes, got {num_classes}")
    if not std > 0 or not math.isfinite(mean):
        raise ValueError(f"noise std must be positive and mean finite, got mean={mean}, std={std}")
    if pool is not None and pool < batch_size:
        raise ValueError(f"pool must hold at least one batch ({batch_size}), got {pool}")

    def draw(n: int) -> tuple[Tensor, Tensor]:
        if noise == "gaussian":
            x = torch.randn((n, *shape[1:]), generator=generator)
        else:
            x = (torch.rand((n, *shape[1:]), generator=generator) * 2 - 1) * math.sqrt(3)
        if std != 1.0 or mean != 0.0:
            x = x * std + mean
        return x.to(device, dtype), torch.randint(0, num_classes, (n,), generator=generator).to(device)

    if pool is None:
        while True:
            yield draw(batch_size)
    xs, ys = draw(pool)
    while True:
        order = torch.randperm(pool, generator=generator).to(device)
        for i in range(0, pool - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield xs[idx], ys[idx]


def _alignment(model: nn.Module, layers: list[str]) -> dict:
    """The alignment record of one moment: angles of the layers whose feedback is used, effective ranks of
    every rule-trained layer."""
    pick = lambda d: {k: v for k, v in d.items() if k in layers}  # noqa: E731
    return {
        "weight_angles": pick(weight_angles(model)),
        "neuron_angles": pick(mean_neuron_angles(model)),
        "effective_rank": effective_ranks(model),
    }


def _probe(model: nn.Module, x: Tensor) -> tuple[int, list[str]]:
    """One eval-mode pass (batch-norm statistics untouched): the number of classes, and the rule-trained
    layers whose input needs a gradient. Only there does the feedback matrix carry an error: the first
    layer's B never does, since nothing lies below it."""
    seen: list[str] = []
    hooks = [
        layer.register_forward_pre_hook(
            lambda m, args, name=name: seen.append(name) if args[0].requires_grad else None
        )
        for name, layer in feedback_layers(model).items()
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if out.dim() != 2:
        raise ValueError(
            f"model output must be [batch, classes] for noise pretraining, got {tuple(out.shape)}"
        )
    return out.shape[1], list(dict.fromkeys(seen))


def pretrain_noise(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    steps: int,
    noise: str = "gaussian",
    mean: float = 0.0,
    std: float = 1.0,
    pool: int | None = 6400,
    batch_size: int = 64,
    lr: float = 0.01,
    optimizer: str | torch.optim.Optimizer = "sgd",
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    seed: int = 0,
    progress: bool = True,
    log_every: int = 100,
) -> list[dict]:
    """Trains `model` in place for `steps` steps on noise inputs with random labels; returns the history.

    model: any model converted with `nowt.convert` (or plain: it then trains by backprop), whose output for
        a batch is [batch, classes]; the number of classes is read from it. Every rule trains as it does on
        data: one `loss.backward()` and optimizer step per batch (per-layer rules, KP, and any rule that
        works through backward), plus each rule's `after_step` hook (for `wm`, its mirror schedule: a
        mirror step of a batch of noise after every eighth step).
    input_shape: one input without the batch dimension, e.g. (1, 28, 28) or (784,).
    steps: number of noise batches (0 only records the starting alignment).
    noise: "gaussian" (x ~ N(0, I), the paper's choice) or "uniform" (U(-sqrt 3, sqrt 3), unit variance).
    mean, std: shift and scale of the noise (default 0 and 1: the paper's N(0, I)).
    pool: size of the fixed noise data set (random inputs with random labels) trained on, pass after pass:
        **nowt's pool variant, not the paper's protocol**. The paper (and `nowt reproduce cheon2024`'s
        registered row) draws fresh noise every batch: pass None. The default is the pool because in nowt
        fresh noise does not align an FA readout and the pool does: the alignment comes from memorising a
        fixed set (784-100-10 ReLU, 3,000 steps of 64, the readout's whole-matrix B-W angle: 91.6 -> 95.4
        degrees fresh, 91.6 -> 23.7 with a pool of 6400; results/cheon2024/ and its conditions/ for the
        paper's protocol and what was tried).
    batch_size, lr, momentum, weight_decay: of the optimizer built here ("sgd", "adam", "adamw",
        "rmsprop"; momentum is used by sgd and rmsprop only). Pass a ready `torch.optim.Optimizer` instead
        to use it as it is (lr, momentum and weight_decay are then ignored).
    seed: seeds the noise and labels (own generator: the global RNG is not consumed).
    progress: show a tqdm bar with the current mean per-neuron angle.
    log_every: steps between history records.

    Returns a list of records, at step 0, every `log_every` steps and at the last step:
    {"step", "loss" (mean cross-entropy over the steps since the last record; nan at step 0),
     "weight_angles", "neuron_angles" (mean per-neuron angle; both over the layers whose feedback
     carries an error), "effective_rank" (of every rule-trained layer's weight), each a {layer: value}
     dict, and "seconds" since the start}.
    The model is left in the training mode it was in.
    """
    if steps < 0 or log_every < 1:
        raise ValueError(f"steps must be >= 0 and log_every >= 1, got steps={steps}, log_every={log_every}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    device, dtype = params[0].device, params[0].dtype
    generator = torch.Generator().manual_seed(seed)
    input_shape = tuple(int(d) for d in input_shape)
    num_classes, layers = _probe(model, torch.zeros((2, *input_shape), device=device, dtype=dtype))
    batches = noise_batches(
        input_shape,
        num_classes,
        batch_size=batch_size,
        noise=noise,
        mean=mean,
        std=std,
        pool=pool,
        generator=generator,
        device=device,
        dtype=dtype,
    )
    opt = (
        optimizer
        if isinstance(optimizer, torch.optim.Optimizer)
        else make_optimizer(optimizer, params, lr, momentum, weight_decay)
    )
    rules = feedback_rules(model)

    start = time.perf_counter()
    history = [{"step": 0, "loss": math.nan, **_alignment(model, layers), "seconds": 0.0}]
    bar = progress_bar(range(1, steps + 1), "noise pretraining", progress)
    loss_sum, count = 0.0, 0
    for step in bar:  # nowt.train's step (nowt.optim.rule_step); the Cheon reproduction uses RuleLearner's
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"noise pretraining loss became {float(loss)} at step {step}; lower lr")
        rule_step(model, rules, opt, loss, step)
        loss_sum, count = loss_sum + loss.item(), count + 1
        if step % log_every == 0 or step == steps:
            record = {
                "step": step,
                "loss": loss_sum / count,
                **_alignment(model, layers),
                "seconds": time.perf_counter() - start,
            }
            history.append(record)
            loss_sum, count = 0.0, 0
            angles = list(record["neuron_angles"].values())
            if angles:
                bar.set_postfix(loss=f"{record['loss']:.3f}", angle=f"{sum(angles) / len(angles):.1f}")
    return history


__all__ = ["NOISES", "noise_batches", "pretrain_noise"]
