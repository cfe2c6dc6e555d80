"""Kolen-Pollack (Akrout et al. 2019): B is learned with exactly W's gradient.

With the same learning rate and weight decay on W and B (any optimizer built from `model.parameters()`
does that), W - B shrinks by the decay factor every step, so B converges to W without ever reading it.
"""

import warnings

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
        weights = layer.leaf_weights()
        if any(w.requires_grad for w in weights):
            self._check_stepped(layer, weights)
            return layer.feedback
        return layer.feedback.detach()

    @staticmethod
    def _check_stepped(layer, weights: list[torch.Tensor]) -> None:
        """Warns once where W moved since the last training forward and B did not: an optimizer built before
        `nowt.convert` holds W but not B, which then stays as drawn while W learns (no error otherwise)."""
        if torch.compiler.is_compiling():
            return  # dynamo would guard on the versions and recompile at every step
        # the tensors' identities too: under torch.func.functional_call or a load, others stand in
        b = layer.feedback
        versions = (tuple((id(w), w._version) for w in weights), (id(b), b._version))
        seen, state = layer.__dict__.get("_kp_versions"), layer.__dict__
        state["_kp_versions"] = versions
        if (seen is None or versions[0] == seen[0] or versions[1] != seen[1] or state.get("_kp_warned")
                or [i for i, _ in versions[0]] != [i for i, _ in seen[0]]):
            return  # the first forward, no step since, B stepped with W, or other tensors stand in for W
        state["_kp_warned"] = True
        warnings.warn("kp: a layer's W changed since the last training forward but its B did not: is B in "
                      "the optimizer? One built before nowt.convert holds W only, and B then stays as drawn; "
                      "build it from model.parameters() after converting (or W was changed in place outside "
                      "the optimizer)", stacklevel=5)

    def setup_model(self, model: nn.Module) -> None:
        # W's gradient sums every use of W, B's only the uses this rule trains: a W shared with a module kp
        # does not train (GPT-2's lm_head and its token embedding) gets a gradient B never sees, so W - B
        # does not decay to 0 and B does not converge to W. Said once, at convert.
        layers = self.layers(model)
        ours = {id(w): name for name, layer in layers.items() for w in layer.leaf_weights()}
        inside = tuple(f"{name}." for name in layers)  # a layer's own parts (weight norm's parametrization)
        for owner, module in model.named_modules():
            if getattr(module, "rule", None) is self or hasattr(module, "rule_parts"):  # attention by parts
                continue
            if owner.startswith(inside):
                continue
            for key, p in module.named_parameters(prefix=owner, recurse=False):
                if id(p) in ours and p.requires_grad:
                    warnings.warn(f"kp: {ours[id(p)]!r} shares its weight with {key!r} "
                                  f"({type(module).__name__}), which kp does not train: W gets that module's "
                                  f"gradient too and B does not, so B will not converge to W; untie them, or "
                                  f"exclude {ours[id(p)]!r}", stacklevel=3)
