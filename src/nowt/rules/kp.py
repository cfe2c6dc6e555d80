"""Kolen-Pollack (Akrout et al. 2019): B is learned with exactly W's gradient.

With the same learning rate and weight decay on W and B (any optimizer built from `model.parameters()`
does that), W - B shrinks by the decay factor every step, so B converges to W without ever reading it.
"""

import torch
from torch import nn

from nowt.rules.base import RandomFeedbackRule


class KolenPollack(RandomFeedbackRule):
    name = "kp"
    needs_weight_decay = ("kp aligns B with W only through weight decay (W - B shrinks by lr x decay a "
                          "step); without it B moves with W but B - W stays as drawn")
    # Layers sharing one W share B: it gets the summed gradient W gets, so W - B still only decays.
    tied_state = ("feedback",)

    def setup(self, layer, generator: torch.Generator) -> None:
        # A parameter: the FeedbackFunction hands it W's gradient whenever it requires grad.
        layer.feedback = nn.Parameter(self.initial_feedback(layer, generator))

    def feedback(self, layer) -> torch.Tensor:
        # B takes W's gradient only while W takes one: B of a frozen W (a frozen embedding tied to an LM head)
        # moved on its own, away from the W it should track. (Leaf weights: a parametrized W is recomputed.)
        if any(w.requires_grad for w in layer.leaf_weights()):
            return layer.feedback
        return layer.feedback.detach()
