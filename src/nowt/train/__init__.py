"""One training loop for every rule: `fit(TrainConfig(rule="fa"))`.

    config.py     TrainConfig: every field's default, choices, range and help; `validate()`, `from_dict()`
    factories.py  loaders, model (converted to its rule), optimizer, lr schedule, loss, rule options
    learners.py   what one batch does: RuleLearner (per-layer rules, DFA) or a whole-network rule's learner
    loop.py       fit: epochs, evaluation, metrics, checkpoints, resume, the NaN stop; evaluate_run: a saved
                  run's model scored on its train and test sets
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
from nowt.train.learners import Learner, RuleLearner, make_learner
from nowt.train.loop import evaluate_run, fit, train_epoch

__all__ = [
    "Learner", "RuleLearner", "TensorLoader", "TrainConfig", "build_model", "evaluate", "evaluate_run", "fit",
    "make_learner", "make_loader", "make_loss", "make_optimizer", "make_scheduler", "model_factories",
    "rule_options", "train_epoch",
]
