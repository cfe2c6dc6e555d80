"""Weight mirrors (Akrout et al. 2019): B learns W from the layer's own activity in a "mirror mode".

In mirror mode each layer is driven by zero-mean noise x of variance s^2 and sees its own response
y = W x (bias left out). Since E[y x^T] = s^2 W, the normalised product y x^T / (s^2 n) is an unbiased
estimate W_hat of W, formed with the layer's local weight-gradient op, so no weight is ever copied.
Each mirror step moves B by

    B <- (1 - decay) B + lr * W_hat

With the default decay = lr this is a moving average of estimates of W, bounded by construction (the
official code's growth control was a no-op assignment). Its step starts at `lr_auto` (fast alignment) and
then shrinks as evidence accumulates, lr_t = min(lr_auto, MIRROR_ANNEAL / t) for the layer's t-th mirror
step: B averages over a window that grows with training (the last ~third of it), so its noise keeps falling
while W, late in training, moves slowly. A fixed step held B at a noise floor near 13 degrees.

Training with `wm` is a normal optimizer step plus mirror steps, run by the rule's own hooks (`nowt train`
and noise pretraining call them): `begin_training` warms B up with `mirror_warmup` steps of a noise batch of
`mirror_warmup_batch`, and `after_step` runs `mirror_steps` steps after every `mirror_every`-th optimizer
step, with a noise batch of `mirror_batch` (0: mirror_every / 8 of the training batch). The default, one
mirror step of a training batch of noise after every 8th optimizer step, costs about 2/3 x 1/8 of the
training step's multiply-adds plus one pass over B per 8 steps: 7-9% of an MLP step on a CPU, where a
step every 2nd optimizer step with a quarter batch (the same noise per step) cost 14-25%, for the same
alignment (results/wm-default).

The paper's own recipe is a set of options: `mirror_every=1, mirror_batch=128, mirror_warmup=468,
mirror_warmup_batch=128, mirror_noise="uniform", mirror_noise_std=0.1/sqrt(12), mirror_activation="sigmoid"`
(the response is sigmoid(W x + b), bias included), `mirror_normalize=False, mirror_lr=0.01, mirror_decay=0`
(B += 0.01 x y^T, unbounded), as `nowt reproduce akrout2019` runs it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nowt.distributed import all_reduce_sum_, noise_for_shard, shard_span, world
from nowt.ops import LinearOp
from nowt.rules.base import Option, RandomFeedbackRule, RuleLayer, declare, host_value, increment_buffer

#: The default schedule: warm-up noise batch (per process); a mirror step after every MIRROR_EVERY optimizer
#: steps with a noise batch of MIRROR_EVERY / MIRROR_BATCH_DIVISOR of the training batch.
MIRROR_WARMUP_BATCH, MIRROR_BATCH_DIVISOR, MIRROR_EVERY = 256, 8, 8
#: A sized warm-up (`mirror_warmup_batch=0`) runs each layer for WARMUP_TIME_CONSTANTS / lr steps: the random
#: start's share of B falls to e^-10 (5e-5), as 300 steps of 256 do on the default MLP (fan-in 784-1000).
WARMUP_TIME_CONSTANTS = 10.0
#: The automatic step after the layer's t-th training mirror step is min(lr_auto, MIRROR_ANNEAL / t): a
#: moving average whose window grows as a fixed fraction (about 1 / (MIRROR_ANNEAL + 1)) of the steps so far.
MIRROR_ANNEAL = 2.0
ACTIVATIONS = {"none": None, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
NOISES = ("normal", "uniform")


class WeightMirror(RandomFeedbackRule):
    """B learned by mirror steps (`mirror_layers`); the rule's hooks run them on the training schedule."""

    name = "wm"
    options: ClassVar[dict[str, Option]] = {**RandomFeedbackRule.options, **declare(
        Option("mirror_steps", 1, "mirror steps after every --mirror-every-th optimizer step", min=0),
        Option("mirror_warmup", 300, "mirror steps before training", min=0),
        Option("mirror_every", MIRROR_EVERY, "optimizer steps between mirror steps", min=1),
        Option("mirror_batch", 0, "noise batch of a training mirror step; 0: mirror_every / 8 of the batch",
               min=0),
        # nowt train keeps the fixed warm-up batch every recipe ran with; the rule's 0 sizes it per layer
        Option("mirror_warmup_batch", 0, "noise batch of a warm-up mirror step; 0: sized per layer (far "
               "cheaper where a layer sees many positions: convolutions, tokens)", min=0,
               train={"default": MIRROR_WARMUP_BATCH}),
        Option("mirror_lr", None, "mirror step size; default: automatic, shrinking as evidence accumulates",
               kind=float | None, gt=0.0),
        Option("mirror_anneal", MIRROR_ANNEAL, "the automatic mirror step after the t-th training mirror "
               "step is min(lr_auto, A / t); 0: a fixed step", min=0.0),
        Option("mirror_decay", None, "decay of B per mirror step; default: the step (a moving average); "
               "0: accumulate", kind=float | None, min=0.0, lt=1.0),
        Option("mirror_noise", "normal", "distribution of the mirror's noise", choices=NOISES),
        Option("mirror_noise_std", 1.0, "standard deviation of the mirror's noise; only with a mirror "
               "activation or no normalisation (the default's estimate divides it out)", gt=0.0),
        Option("mirror_activation", "none", "the mirror's response: W x (none) or act(W x + b)",
               choices=tuple(ACTIVATIONS)),
        Option("mirror_normalize", True, "the mirror's estimate is y x^T / (s^2 n), an estimate of W; "
               "--no-mirror-normalize: the raw sum y x^T (the paper's)"),
    )}
    mirror_steps: int  # the options' values (set by `Rule.__init__`)
    mirror_warmup: int
    mirror_every: int
    mirror_batch: int
    mirror_warmup_batch: int
    mirror_lr: float | None
    mirror_anneal: float
    mirror_decay: float | None
    mirror_noise: str
    mirror_noise_std: float
    mirror_activation: str
    mirror_normalize: bool

    @classmethod
    def idle_options(cls, values: Mapping[str, Any]) -> dict[str, str]:
        """mirror_anneal beside a fixed mirror_lr; mirror_noise_std where the normalised linear response
        divides it out."""
        idle = {}
        if values["mirror_lr"] is not None:
            idle["mirror_anneal"] = (f"it shapes the automatic mirror step, and with mirror_lr "
                                     f"({values['mirror_lr']:g}) the step is fixed: set one of them")
        if values["mirror_activation"] == "none" and values["mirror_normalize"]:
            idle["mirror_noise_std"] = (
                "the mirror's response W x is linear in the noise x of std s, and the normalised estimate "
                "y x^T / (s^2 n) divides s^2 out again, so s cancels; it matters only with a "
                "mirror_activation other than none or with mirror_normalize off (the paper's recipe)")
        return idle

    def setup(self, layer, generator: torch.Generator) -> None:
        super().setup(layer, generator)
        # The global training batch the noise batch is a fraction of, and the count of training mirror
        # steps the automatic step shrinks with: buffers, so a resumed run has them.
        layer.register_buffer("mirror_batch_size", torch.tensor(0, device=layer.weight.device))
        layer.register_buffer("mirror_count", torch.tensor(0, device=layer.weight.device))

    def _mirror(self, layers: Mapping[str, RuleLayer], steps: int, batch_size: int | None,
                anneal: bool) -> None:
        mirror_layers(layers, steps, lr=self.mirror_lr, decay=self.mirror_decay, noise=self.mirror_noise,
                      noise_std=self.mirror_noise_std, activation=self.mirror_activation,
                      normalize=self.mirror_normalize, batch_size=batch_size,
                      anneal=self.mirror_anneal if anneal else 0.0)

    def begin_training(self, model: nn.Module, batch_size: int) -> None:
        """Notes the training batch and aligns B from its random start: the warm-up of `warmup_plan`."""
        layers = self.layers(model)
        for layer in layers.values():
            layer.mirror_batch_size.fill_(batch_size)
        plan = self.warmup_plan(layers)
        if self.mirror_warmup_batch and plan:  # fixed: every layer alike, in one call
            self._mirror(layers, *next(iter(plan.values())), anneal=False)
            return
        for name, (steps, batch) in plan.items():  # layer by layer, as one call runs them
            self._mirror({name: layers[name]}, steps, batch, anneal=False)

    def warmup_plan(self, layers: Mapping[str, RuleLayer]) -> dict[str, tuple[int, int]]:
        """{layer name: (warm-up mirror steps, noise batch per process)}.

        With `mirror_warmup_batch` > 0: `mirror_warmup` steps of that batch for every layer (the old
        default, 256; the paper's recipe, 128). With 0 (the rule's default), sized from each layer: a
        noise batch just large enough that one step sums about fan-in noise pairs per weight (a
        convolution's or a token layer's positions count: batch = ceil(fan_in / positions), at most
        MIRROR_WARMUP_BATCH), which is where the automatic step reaches its cap of 0.1, and
        WARMUP_TIME_CONSTANTS / step steps (at most `mirror_warmup`): B forgets its random start to e^-10
        and ends at the schedule's noise floor (~13 degrees) as the fixed warm-up does. On the default MLP
        this is the fixed warm-up exactly (300 steps of 256); on layers that see many positions it is far
        cheaper (resnet18's convolutions: batch 1-3 where it was 256, 100 steps where it was 300).
        """
        size = world()[1]
        if self.mirror_warmup_batch:
            return {n: (self.mirror_warmup, max(1, self.mirror_warmup_batch // size)) for n in layers}
        plan = {}
        for name, layer in layers.items():
            if layer.last_input_shape is None:
                raise RuntimeError(f"mirror: layer {name!r} has not seen an input yet; run a forward pass "
                                   f"first")
            _, positions, fan_in = _pair_counts(layer, torch.Size((1, *batched_shape(layer)[1:])))
            batch = min(MIRROR_WARMUP_BATCH, max(1, math.ceil(fan_in / positions)))
            step = self.mirror_lr or min(0.1, AUTO_LR_SCALE * batch * positions / fan_in)
            steps = min(self.mirror_warmup, math.ceil(WARMUP_TIME_CONSTANTS / step))
            plan[name] = (steps, max(1, math.ceil(batch / size)))
        return plan

    def after_step(self, model: nn.Module, step: int) -> None:
        """`mirror_steps` mirror steps after every `mirror_every`-th optimizer step, so B tracks W."""
        layers = self.layers(model)
        if step % self.mirror_every == 0 and layers:
            batch = self.noise_batch(next(iter(layers.values())))
            self._mirror(layers, self.mirror_steps, batch, anneal=True)

    def noise_batch(self, layer) -> int | None:
        """Per process: `mirror_batch`, or mirror_every / 8 of the global training batch (split over the
        ranks, so every rank mirrors with the same numbers), or, where `begin_training` has not told it
        (noise pretraining), of the batch the layer last saw."""
        size = world()[1]
        if self.mirror_batch:
            return max(1, self.mirror_batch // size)
        batch = host_value(layer, "mirror_batch_size")
        if batch:
            return max(1, batch * self.mirror_every // (MIRROR_BATCH_DIVISOR * size))
        if layer.last_input_shape is None:
            return None  # mirror_layers says: run a forward pass first
        return max(1, batched_shape(layer)[0] * self.mirror_every // MIRROR_BATCH_DIVISOR)


def batched_shape(layer) -> torch.Size:
    """The layer's last input shape with its batch first: an unbatched input to a Linear layer (features
    only) is a batch of one, so the noise keeps the features and replaces only the batch."""
    shape = layer.last_input_shape
    return torch.Size((1, *shape)) if len(shape) == 1 else shape


def _check_step(lr: float | None, decay: float | None, noise_std: float) -> None:
    if not ((lr is None or lr > 0) and (decay is None or 0 <= decay < 1) and noise_std > 0):
        raise ValueError(f"the mirror needs lr > 0 (or None: automatic), 0 <= decay < 1 (or None: = lr) and "
                         f"noise_std > 0; got lr={lr}, decay={decay}, noise_std={noise_std}")


def _response(layer, x: Tensor, activation: str) -> Tensor:
    """The layer's response to noise x: W x, or act(W x + b) with an activation."""
    act = ACTIVATIONS[activation]
    y = layer.op.forward(x, layer.weight, None if act is None else layer.bias)
    return y if act is None else act(y)


def _local_estimate(layer, x: Tensor, scale: Tensor | float, activation: str = "none") -> Tensor:
    """sum over the batch (and positions) of y x^T for the layer's response y, times `scale`: the layer's
    own weight-gradient op. A scalar scale is folded into the (small) noise batch rather than applied to the
    weight-sized sum."""
    y = _response(layer, x, activation)
    if isinstance(layer.op, LinearOp):
        return layer.op.weight_grad(x * scale, y)
    return layer.op.weight_grad(x, y, layer.weight.shape) * scale


def _pair_counts(layer, shape: torch.Size) -> tuple[Tensor | float, float, float]:
    """How many (input, output) pairs each weight entry sums over (n for Linear, per kernel tap for conv),
    their mean, and the fan-in: how many inputs feed one output on average, the number of terms in each y of
    the y x^T estimate, which sets its noise. Computed once per shape, device and dtype (a cast model
    gets counts of its new dtype), so a GPU does not sync on every mirror step.

    The fan-in is counted, not read off the weight's shape: a transposed convolution's weight is
    (in, out/groups, k...), and each output sums over in/groups channels times only about k/stride taps per
    dimension (fewer at the borders)."""
    if isinstance(layer.op, LinearOp):
        n = float(torch.Size(shape[:-1]).numel())
        return n, n, float(shape[-1])
    w = layer.weight
    key = (shape, w.device, w.dtype)
    cached = getattr(layer, "_mirror_counts", None)
    if cached is not None and cached[0] == key:
        return cached[1:]
    ones = torch.ones(shape, device=w.device, dtype=w.dtype)
    out = layer.op.forward(ones, torch.ones_like(w), None)  # each output: the count of its terms
    counts = layer.op.weight_grad(ones, torch.ones_like(out), w.shape).clamp_min(1.0)
    layer._mirror_counts = (key, counts, float(counts.mean()), float(out.mean()))
    return layer._mirror_counts[1:]


#: Steady-state relative noise of B is sqrt(lr * fan_in / (2 * samples)); this keeps it near 0.22 (~13 deg).
AUTO_LR_SCALE = 0.1


@torch.no_grad()
def mirror_layers(
    layers: Mapping[str, RuleLayer],
    steps: int = 1,
    *,
    lr: float | None = None,
    decay: float | None = None,
    noise: str = "normal",
    noise_std: float = 1.0,
    activation: str = "none",
    normalize: bool = True,
    batch_size: int | None = None,
    anneal: float = 0.0,
    generator: torch.Generator | None = None,
) -> int:
    """Runs `steps` mirror-mode steps on each of `layers` (wm layers by name); returns how many it updated.

    The noise ("normal" or "uniform", zero mean, standard deviation `noise_std`) has the shape of each
    layer's most recent input (run one forward pass first), with the batch dimension replaced by
    `batch_size` when given. `normalize`: the estimate is y x^T / (s^2 n), an estimate of W; otherwise the
    raw sum y x^T (the paper's B += lr x y^T). `decay` defaults to the step (a moving average).
    `lr=None` picks, per layer, lr_auto = min(0.1, 0.1 * samples / fan_in), where samples is the number of
    noise pairs each weight entry averages over in one step (the batch, times positions for a conv) and
    fan_in the mean number of inputs that feed one output (see `_pair_counts`): the estimate's noise stays
    at ~13 degrees whatever the batch, and B aligns in about 2.3 / lr steps.
    With `anneal` > 0 (the training schedule: MIRROR_ANNEAL) that step shrinks as evidence accumulates:
    min(lr_auto, anneal / t) at the layer's t-th annealed step (counted in its `mirror_count`).
    Under torch.distributed every rank draws the noise of the global batch from the same generator state
    and uses its own slice; estimates are summed over ranks and normalised by the global batch's pairs, so
    all ranks get one process's B, uneven shards (a batch the world does not divide) included.
    """
    _check_step(lr, decay, noise_std)
    if steps < 0 or (batch_size is not None and batch_size < 1) or activation not in ACTIVATIONS:
        raise ValueError(f"mirror needs steps >= 0, batch_size >= 1 and an activation of "
                         f"{', '.join(ACTIVATIONS)} (got steps={steps}, batch_size={batch_size}, "
                         f"activation={activation!r})")
    size = world()[1]
    for name, layer in layers.items():
        if layer.last_input_shape is None:
            raise RuntimeError(f"mirror: layer {name!r} has not seen an input yet; run a forward pass first")
        shape = batched_shape(layer)
        if batch_size is not None:
            shape = torch.Size((batch_size, *shape[1:]))
        span = shard_span(shape[0])  # ranks' shards may differ (4 + 3): count the global batch's pairs
        counts, samples, fan_in = _pair_counts(layer, torch.Size((span[1], *shape[1:])))
        w = layer.weight
        auto = min(0.1, AUTO_LR_SCALE * samples / fan_in)
        scale = 1 / (counts * noise_std**2) if normalize else 1.0
        for _ in range(steps):
            step = lr if lr is not None else auto
            if anneal and lr is None and hasattr(layer, "mirror_count"):
                step = min(auto, anneal / (increment_buffer(layer, "mirror_count") + 1))
            keep = 1 - (step if decay is None else decay)
            x = noise_for_shard(shape, noise, generator=generator, device=w.device, dtype=w.dtype,
                                span=span) * noise_std
            if decay is None and size == 1 and type(layer.op) is LinearOp:
                # the default moving average fused into the estimate's product: one pass over B, no
                # weight-sized temporary (the mirror step is two products and this pass); B stored (out, in),
                # so not a subclass such as GPT-2's Conv1D (TransposedLinearOp, B stored (in, out))
                y = _response(layer, x, activation)
                layer.feedback.addmm_(y.reshape(-1, y.shape[-1]).t(), x.reshape(-1, x.shape[-1]),
                                      beta=1 - step, alpha=float(step * scale))
                continue
            estimate = all_reduce_sum_(_local_estimate(layer, x, scale, activation))
            if decay is None:  # the default moving average, in one pass over B
                layer.feedback.lerp_(estimate, step)
            else:
                if keep != 1:
                    layer.feedback.mul_(keep)
                layer.feedback.add_(estimate, alpha=step)
    return len(layers)


__all__ = ["MIRROR_ANNEAL", "MIRROR_BATCH_DIVISOR", "MIRROR_EVERY", "MIRROR_WARMUP_BATCH",
           "WARMUP_TIME_CONSTANTS", "WeightMirror", "mirror_layers"]
