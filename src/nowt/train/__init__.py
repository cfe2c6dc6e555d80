"""One training loop for every rule: `fit(TrainConfig(rule="fa"))`.

    config.py     TrainConfig: every field's default, choices, range and help; `validate()`, `from_dict()`
    schema.py     the fields' metadata and checks; the rule options' fields, made from the rules' `Option`s
    factories.py  loaders, model (converted to its rule), optimizer, lr schedule, loss, rule options
    kinds.py      learner_kind: per-layer or whole-network, decided once; what follows from it (LearnerKind)
    learners.py   what one batch does: RuleLearner (per-layer rules, DFA) or WholeNetworkLearner (a
                  whole-network rule's own learner)
    loop.py       fit: epochs, evaluation, metrics, checkpoints, resume, the NaN stop; evaluate_run: a saved
                  run's model scored on its train and test sets
    ranks.py      what a torchrun job's ranks must agree on before training: resuming, the world size
    rundir.py     the run directory: its lock and owner checks, provenance, TensorBoard
"""

from nowt.metrics import evaluate
from nowt.optim import make_optimizer
from nowt.train.config import TrainConfig
from nowt.train.factories import (
    TensorLoader,
    build_model,
    make_loader,
    make_loss,
    make_scheduler,
    model_factories,
    rule_options,
)
from nowt.train.kinds import LearnerKind, learner_kind
from nowt.train.learners import Learner, RuleLearner, WholeNetworkLearner, make_learner
from nowt.train.loop import evaluate_run, fit, train_epoch

__all__ = [
    "Learner", "LearnerKind", "RuleLearner", "TensorLoader", "TrainConfig", "WholeNetworkLearner",
    "build_model", "evaluate", "evaluate_run", "fit", "learner_kind", "make_learner", "make_loader",
    "make_loss", "make_optimizer", "make_scheduler", "model_factories", "rule_options", "train_epoch",
]
