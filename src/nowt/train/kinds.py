"""Per-layer or whole-network: how a rule trains, decided in one place (`learner_kind`), and what follows from
the answer, which building the model, the config's checks and the loop ask of the kind instead of the rule.

Below config, factories and learners, so each of them can ask it; `learners.LEARNERS` maps a kind to the
learner class that trains it.
"""

from __future__ import annotations

from dataclasses import dataclass

from nowt.rules import WholeNetworkRule, rule_class


@dataclass(frozen=True)
class LearnerKind:
    name: str
    #: `build_model` converts the network to the rule layer by layer (else the plain network trains).
    converts_model: bool
    #: --noise-pretrain applies: the converted model is trained on noise by its rule first.
    pretrains_on_noise: bool
    #: The optimizer it always trains with, whatever --optimizer says (None: --optimizer's).
    own_optimizer: str | None


#: Per-layer rules and DFA: the rule acts inside autograd's backward (`learners.RuleLearner`).
PER_LAYER = LearnerKind("per-layer", converts_model=True, pretrains_on_noise=True, own_optimizer=None)
#: Target propagation: the rule's own learner trains the plain network with Adam
#: (`learners.WholeNetworkLearner`).
WHOLE_NETWORK = LearnerKind("whole-network", converts_model=False, pretrains_on_noise=False,
                            own_optimizer="adam")


def learner_kind(rule: str) -> LearnerKind:
    """The one place that asks whether `rule` trains layer by layer or as a whole network."""
    return WHOLE_NETWORK if issubclass(rule_class(rule), WholeNetworkRule) else PER_LAYER
