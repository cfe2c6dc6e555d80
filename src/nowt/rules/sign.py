"""Sign symmetry: B = magnitude * sign(W), recomputed from the current W at every forward that sends a
gradient to the layer's input.

- usf (uniform sign-concordant feedback, Liao et al. 2016; Xiao et al. 2018): one positive scalar per layer,
  mean(|W|), the c minimising ||W - c sign(W)||.
- frsf (fixed random-magnitude sign-concordant feedback, Moskovitz et al. 2018): |R| * sign(W), R fixed.
- brsf (batchwise random-magnitude): |R| * sign(W) with R redrawn at every forward pass, reproducibly from
  the layer's seed and a draw counter (both buffers, so a resumed or distributed run draws the same R).
B is formed as copysign(magnitude, W), so an exactly zero weight feeds back +magnitude rather than 0.
These rules do read the signs of W in backward: they relax weight transport, they do not remove it.
"""

import collections
import math
from typing import ClassVar

import torch

from nowt.ops import refuse_under_transforms
from nowt.rules.base import RandomFeedbackRule, host_value, increment_buffer, random_matrix

#: The inits whose |R| is uniform on (0, bound) ("match" is a uniform of W's spread)
UNIFORM = ("match", "kaiming_uniform", "xavier_uniform")


class _SignSymmetry(RandomFeedbackRule):
    transports_weights: bool = True

    def magnitude(self, layer) -> torch.Tensor:
        raise NotImplementedError

    def setup(self, layer, generator: torch.Generator) -> None:
        layer.register_buffer("feedback", self._feedback(layer))

    def _feedback(self, layer) -> torch.Tensor:
        # copysign is one pass over memory where sign() then a product is three: on a CPU these
        # memory-bound passes cost as much as an MLP's matmuls. (An exactly zero weight takes + here.)
        with torch.no_grad():
            return torch.copysign(self.magnitude(layer), layer.weight)

    def feedback_tensors(self, layer) -> list[torch.Tensor]:
        return []  # B follows W's signs: nothing random to redraw

    def forward(self, layer, x: torch.Tensor) -> torch.Tensor:
        if not x.requires_grad:  # a first layer: W and b get the same gradients without B, which costs
            return layer.op.forward(x, layer.weight, layer.bias)  # passes over W (and brsf a draw)
        return super().forward(layer, x)

    def alignment_pairs(self, model):
        # B with W's current signs: a layer whose input takes no gradient (the first) forms no B per step.
        return {name: (torch.copysign(layer.feedback, layer.weight.detach()), layer.weight)
                for name, layer in self.layers(model).items()}

    def feedback(self, layer) -> torch.Tensor:
        # A fresh tensor each step: the one saved by an earlier forward must stay as it was.
        layer.feedback = self._feedback(layer)
        return layer.feedback


class USF(_SignSymmetry):
    name = "usf"
    options: ClassVar[dict] = {}  # no options: its magnitude is mean(|W|)

    def magnitude(self, layer) -> torch.Tensor:
        w = layer.weight
        # abs().sum(): a vectorised reduction; linalg.vector_norm(w, 1) took 2.7x as long on a CPU (2.0
        # against 0.75 ms for 1000 x 1000), a sixth of the MLP benchmark's step.
        return w.abs().sum() / w.numel()


class FRSF(_SignSymmetry):
    name = "frsf"
    tied_state = ("feedback_magnitude",)  # one W, one |R| (its B is formed at every forward)

    def setup(self, layer, generator: torch.Generator) -> None:
        layer.register_buffer("feedback_magnitude", self.initial_feedback(layer, generator).abs())
        super().setup(layer, generator)

    def magnitude(self, layer) -> torch.Tensor:
        return layer.feedback_magnitude


class BRSF(_SignSymmetry):
    name = "brsf"

    def setup(self, layer, generator: torch.Generator) -> None:
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        layer.register_buffer("feedback_seed", torch.tensor(seed, device=layer.weight.device))
        layer.register_buffer("feedback_draws", torch.tensor(0, device=layer.weight.device))
        if self.init == "match":  # redrawn every batch at W's spread at conversion: kept with the state
            std = self.weight_std(layer) or 0.0
            layer.register_buffer("magnitude_std", torch.tensor(std, device=layer.weight.device))
        super().setup(layer, generator)
        layer.__dict__.pop("_brsf_made", None)  # B's first form, made here, is no forward's draw

    def magnitude_std(self, layer) -> float | None:
        """The spread the magnitudes are drawn at under "match": the saved one (a loaded model draws what
        the saved one did), W's at conversion."""
        if "magnitude_std" in layer._buffers:
            return host_value(layer, "magnitude_std") or None
        return self.weight_std(layer)

    @torch.compiler.disable  # a seeded draw per batch: run eagerly rather than recompile each step
    def magnitude(self, layer) -> torch.Tensor:
        draw = self._draw(layer)
        w = layer.weight
        g = torch.Generator(w.device).manual_seed(host_value(layer, "feedback_seed") + 1_000_003 * draw)
        if self.init in UNIFORM and w.device.type == "cpu":
            # |R| of a uniform init is U(0, bound). The CPU's generator makes ~30 ns per float, as much as
            # the step's matmuls on an MLP; 64 random bits cut into four 16-bit levels are 4x cheaper.
            bound = self._bound(layer)
            # random_ over the full 64-bit range takes the generator's words as they are (a third faster than
            # randint's modulo); its top bit flipped, they are the words randint(-2**63, 2**63 - 1) drew.
            bits = torch.empty((w.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None, generator=g)
            levels = bits.bitwise_xor_(-(2**63)).view(torch.int16)[: w.numel()].view(w.shape)
            return levels.to(w.dtype).add_(32768.5).mul_(bound * self.scale / 65536)
        std = self.magnitude_std(layer)
        return random_matrix(w.shape, g, self.init, self.scale, w.device, std).abs_().to(w.dtype)

    @staticmethod
    def _draw(layer) -> int:
        """The draw counter's next value; but a forward rerun inside a backward (non-reentrant activation
        checkpointing's recomputation) takes, in order, the draws its first run made while W stayed as it
        is: it drew anew, so backward used another R than the forward's and the counter ran ahead. (The
        reentrant kind's first run, under no_grad, drew nothing: its rerun draws.)"""
        # (`setup` of a redraw after `to_empty` forms B on a stand-in holding W alone)
        leaves = layer.leaf_weights() if hasattr(layer, "leaf_weights") else [layer.weight]
        weights = tuple((id(w), w._version) for w in leaves)
        made = layer.__dict__.get("_brsf_made")
        if made is None or made[0] != weights:  # an optimizer step (a load) moved W: earlier draws are done
            made = layer.__dict__["_brsf_made"] = (weights, collections.deque(maxlen=64))
        in_backward = torch._C._current_graph_task_id() != -1
        if in_backward and made[1]:
            return made[1].popleft()
        refuse_under_transforms("brsf", "it draws new magnitudes every step, counting them in place")
        draw = increment_buffer(layer, "feedback_draws")
        if not in_backward:
            made[1].append(draw)
        return draw

    def _bound(self, layer) -> float:
        """The uniform init's bound: sqrt(3) std(W) at conversion for "match" (the fan-in one where W's
        spread is 0), 1 / sqrt(fan_in) for kaiming_uniform, Glorot's for xavier_uniform."""
        std = self.magnitude_std(layer)
        if std:
            return math.sqrt(3.0) * std
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(layer.weight)
        return math.sqrt(6 / (fan_in + fan_out)) if self.init == "xavier_uniform" else 1 / math.sqrt(fan_in)
