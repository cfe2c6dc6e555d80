"""Weight mirrors (Akrout et al. 2019): B learns W from the layer's own activity in a "mirror mode".

In mirror mode each layer is driven by zero-mean noise x of variance s^2 and sees its own response
y = W x (bias left out). Since E[y x^T] = s^2 W, the normalised product y x^T / (s^2 n) is an unbiased
estimate W_hat of W, formed with the layer's local weight-gradient op, so no weight is ever copied.
Each mirror step moves B by

    B <- (1 - decay) B + lr * W_hat

With the default decay = lr this is an exponential moving average of estimates of W: B converges to W and
stays bounded by construction (the official code's growth control was a no-op assignment). Training with
`wm` is a normal optimizer step plus mirror steps, run by the rule's own hooks (`nowt train` and noise
pretraining call them): `begin_training` warms B up with `mirror_warmup` steps of a 256-example noise batch,
and `after_step` runs `mirror_steps` steps with a noise batch of 1/4 of the training batch after every second
optimizer step (~17% of an MLP step on a CPU, where a mirror step is memory-bound: it reads W twice whatever
its batch, so fewer, larger mirror steps cost less for the same number of noise samples).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from nowt.distributed import all_reduce_sum_, randn_for_shard, world
from nowt.ops import LinearOp
from nowt.rules.base import RandomFeedbackRule, host_value

#: The schedule: warm-up noise batch (per process); a mirror step after every MIRROR_EVERY optimizer steps
#: with a noise batch of MIRROR_EVERY / MIRROR_BATCH_DIVISOR of the training batch.
MIRROR_WARMUP_BATCH, MIRROR_BATCH_DIVISOR, MIRROR_EVERY = 256, 8, 2


class WeightMirror(RandomFeedbackRule):
    """B learned by mirror steps (`mirror_layers`); the rule's hooks run them on the training schedule."""

    name = "wm"
    options: ClassVar[dict[str, Any]] = {**RandomFeedbackRule.options, "mirror_steps": 1,
                                         "mirror_warmup": 300}

    def validate(self) -> None:
        super().validate()
        for key in ("mirror_steps", "mirror_warmup"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{key} must be an int >= 0, got {value!r}")

    def setup(self, layer, generator: torch.Generator) -> None:
        super().setup(layer, generator)
        # The global training batch the noise batch is a fraction of; a buffer, so a resumed run has it.
        layer.register_buffer("mirror_batch_size", torch.tensor(0, device=layer.weight.device))

    def begin_training(self, model: nn.Module, batch_size: int) -> None:
        """Notes the training batch and aligns B from its random start: `mirror_warmup` mirror steps."""
        layers = self.layers(model)
        for layer in layers.values():
            layer.mirror_batch_size.fill_(batch_size)
        mirror_layers(layers, self.mirror_warmup, batch_size=MIRROR_WARMUP_BATCH)

    def after_step(self, model: nn.Module, step: int) -> None:
        """`mirror_steps` mirror steps after every MIRROR_EVERY-th optimizer step, so B tracks W."""
        layers = self.layers(model)
        if step % MIRROR_EVERY == 0 and layers:
            mirror_layers(layers, self.mirror_steps, batch_size=self.noise_batch(next(iter(layers.values()))))

    def noise_batch(self, layer) -> int | None:
        """Per process: MIRROR_EVERY / MIRROR_BATCH_DIVISOR of the global training batch (split over the
        ranks, so every rank mirrors with the same numbers), or, where `begin_training` has not told it
        (noise pretraining), of the batch the layer last saw."""
        batch = host_value(layer, "mirror_batch_size")
        if batch:
            return max(1, batch * MIRROR_EVERY // (MIRROR_BATCH_DIVISOR * world()[1]))
        if layer.last_input_shape is None:
            return None  # mirror_layers says: run a forward pass first
        return max(1, layer.last_input_shape[0] * MIRROR_EVERY // MIRROR_BATCH_DIVISOR)


def _local_estimate(layer, x: Tensor, scale: Tensor | float) -> Tensor:
    """sum over the batch (and positions) of y x^T for y = W x, times `scale`: the layer's own weight-gradient
    op. A scalar scale is folded into the (small) noise batch rather than applied to the weight-sized sum."""
    y = layer.op.forward(x, layer.weight, None)
    if isinstance(layer.op, LinearOp):
        return layer.op.weight_grad(x * scale, y)
    return layer.op.weight_grad(x, y, layer.weight.shape) * scale


def _pair_counts(layer, shape: torch.Size) -> tuple[Tensor | float, float]:
    """How many (input, output) pairs each weight entry sums over (n for Linear, per kernel tap for conv),
    and their mean as a float, computed once per shape so a GPU does not sync on every mirror step."""
    if isinstance(layer.op, LinearOp):
        n = float(torch.Size(shape[:-1]).numel())
        return n, n
    cached = getattr(layer, "_mirror_counts", None)
    if cached is not None and cached[0] == shape:
        return cached[1:]
    w = layer.weight
    ones = torch.ones(shape, device=w.device, dtype=w.dtype)
    out = layer.op.forward(ones, torch.ones_like(w), None)
    counts = layer.op.weight_grad(ones, torch.ones_like(out), w.shape).clamp_min(1.0)
    layer._mirror_counts = (shape, counts, float(counts.mean()))
    return layer._mirror_counts[1:]


#: Steady-state relative noise of B is sqrt(lr * fan_in / (2 * samples)); this keeps it near 0.22 (~13 deg).
AUTO_LR_SCALE = 0.1


@torch.no_grad()
def mirror_layers(
    layers: dict[str, nn.Module],
    steps: int = 1,
    *,
    lr: float | None = None,
    decay: float | None = None,
    noise_std: float = 1.0,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Runs `steps` mirror-mode steps on each of `layers` (wm layers by name); returns how many it updated.

    The noise has the shape of each layer's most recent input (run one forward pass first), with the batch
    dimension replaced by `batch_size` when given. `decay` defaults to `lr` (see the module docstring).
    `lr=None` picks, per layer, lr = min(0.1, 0.1 * samples / fan_in), where samples is the number of
    noise pairs each weight entry averages over in one step (the batch, times positions for a conv): the
    estimate's noise then stays at ~13 degrees whatever the batch, and B aligns in about 2.3 / lr steps
    (a few hundred steps on an MNIST MLP with the training batch; more with a small `batch_size`).
    Under torch.distributed every rank draws the noise of the global batch from the same generator state
    and uses its own slice; estimates are summed over ranks, so all ranks get one process's B.
    """
    if not ((lr is None or lr > 0) and (decay is None or 0 <= decay < 1) and noise_std > 0 and steps >= 0
            and (batch_size is None or batch_size >= 1)):
        raise ValueError(f"mirror needs lr > 0, 0 <= decay < 1, noise_std > 0, steps >= 0, batch_size >= 1 "
                         f"(got lr={lr}, decay={decay}, noise_std={noise_std}, steps={steps}, "
                         f"batch_size={batch_size})")
    size = world()[1]
    for name, layer in layers.items():
        if layer.last_input_shape is None:
            raise RuntimeError(f"mirror: layer {name!r} has not seen an input yet; run a forward pass first")
        shape = layer.last_input_shape
        if batch_size is not None:
            shape = torch.Size((batch_size, *shape[1:]))
        counts, samples = _pair_counts(layer, shape)
        counts, samples = counts * size, samples * size
        w = layer.weight
        step = lr if lr is not None else min(0.1, AUTO_LR_SCALE * samples / w[0].numel())
        keep = 1 - (step if decay is None else decay)
        scale = 1 / (counts * noise_std**2)
        for _ in range(steps):
            x = randn_for_shard(shape, generator=generator, device=w.device, dtype=w.dtype) * noise_std
            estimate = all_reduce_sum_(_local_estimate(layer, x, scale))
            if keep == 1 - step:  # the default moving average, in one pass over B
                layer.feedback.lerp_(estimate, step)
            else:
                layer.feedback.mul_(keep).add_(estimate, alpha=step)
    return len(layers)


__all__ = ["MIRROR_BATCH_DIVISOR", "MIRROR_EVERY", "MIRROR_WARMUP_BATCH", "WeightMirror", "mirror_layers"]
