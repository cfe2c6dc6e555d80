"""Nøkland 2016, Direct Feedback Alignment Provides Learning in Deep Neural Networks: DFA with dropout on
permutation-invariant MNIST (the abstract's 1.45% test error; the paper's other tables are not readable in
our copy), with FA and BP beside it under the same recipe."""

from __future__ import annotations

import math

from nowt.reproduce.entry import Reproduction

PAPER = "Nøkland 2016, Direct Feedback Alignment Provides Learning in Deep Neural Networks"

#: The official code's defaults (github.com/anokland/dfa-torch, Main.lua and Models/mlp.lua) with `-dropout 1`
#: and `-epoch_step 0`: 2 x 800 tanh, 0.1 input and 0.5 hidden dropout, a sigmoid cross-entropy per class,
#: pixels in [0, 1], shuffled batches of 64, RMSprop lr 1e-4 (alpha 0.99, eps 1e-8, as torch's), the lr
#: halved when an epoch's training error is not under its running mean, stopping after 8 halvings or 300
#: epochs. FA and DFA tanh nets start from zero forward weights; B is U(-1, 1) / sqrt(fan).
RECIPE = dict(dataset="mnist", model="mlp", hidden=(800, 800), activation="tanh", dropout=0.5,
              input_dropout=0.1, loss="bce", standardize=False, optimizer="rmsprop", lr=1e-4, momentum=0.0,
              batch_size=64, lr_schedule="plateau", epochs=300)
DFA = {"final_test_error": 1.45, "best_test_error": 1.45}
UNPUBLISHED = {"final_test_error": math.nan, "best_test_error": math.nan}

ENTRIES = [
    Reproduction(
        name="nokland2016", paper=PAPER, table="abstract: DFA with dropout, permutation-invariant MNIST",
        config=RECIPE,
        runs={"dfa": {"rule": "dfa", "init": "zeros"}, "fa": {"rule": "fa", "init": "zeros"},
              "bp": {"rule": "bp"},
              "dfa-constant-lr": {"rule": "dfa", "init": "zeros", "lr_schedule": "constant"}},
        published={"dfa": DFA, "dfa-constant-lr": DFA, "fa": UNPUBLISHED, "bp": UNPUBLISHED},
        explorations={"dfa-constant-lr": (
            "2026-11-25, after the registered dfa row gave 1.90 against 1.45: the paper chose the dropout "
            "runs' lr decay and length on a validation set whose values it does not give; this run keeps "
            "the lr constant for all 300 epochs, and its best-epoch number is picked on the test set")},
        quick=dict(epochs=2, train_size=20000),
        unjudged={"best_test_error": "the best epoch is picked on the test set, which the paper does not "
                                     "say it does; its one number, 1.45, is judged against the final epoch's "
                                     "(final_test_error)"},
        notes=("The official code's recipe (github.com/anokland/dfa-torch, `-dropout 1 -epoch_step 0`): "
               "2 x 800 tanh, dropout 0.1 on the input and 0.5 on the hidden layers, sigmoid cross-entropy, "
               "pixels in [0, 1], RMSprop lr 1e-4, batch 64, the lr halved when an epoch's training error is "
               "not under its running mean (0.75 m + 0.25 e), ending after 8 halvings or 300 epochs. DFA and "
               "FA start from zero forward weights (the official FA code leaves the first layer at its "
               "default init; ours zeroes it too). The paper reports one test error; we give the final and "
               "the best epoch's. The paper chose the dropout runs' lr decay and training time on a "
               "validation set and does not give them: `dfa-constant-lr` is the same run without decay for "
               "all 300 epochs (an exploration).")),
]
