"""Nøkland 2016, Direct Feedback Alignment Provides Learning in Deep Neural Networks: DFA with dropout on
permutation-invariant MNIST (the abstract's 1.45% test error; the paper's other tables are not readable in
our copy)."""

from __future__ import annotations

from nowt.reproduce.entry import Reproduction

PAPER = "Nøkland 2016, Direct Feedback Alignment Provides Learning in Deep Neural Networks"

ENTRIES = [
    Reproduction(
        name="nokland2016", paper=PAPER, table="abstract: DFA with dropout, permutation-invariant MNIST",
        config=dict(dataset="mnist", model="mlp", hidden=(800, 800), activation="tanh", dropout=0.5,
                    optimizer="rmsprop", lr=1e-4, momentum=0.0, batch_size=64, lr_schedule="constant",
                    epochs=300),
        runs={"dfa": {"rule": "dfa"}, "bp": {"rule": "bp"}},
        published={"dfa": {"best_test_error": 1.45}},
        quick=dict(epochs=2, train_size=20000),
        notes=("RMSprop lr 1e-4, batch 64, 0.5 hidden dropout are the official code's; the two 800-unit "
               "layers are our reading of the dropout run, the 0.1 input dropout and the lr halving on "
               "plateaus are not reproduced. BP is run alongside for reference (no published number).")),
]
