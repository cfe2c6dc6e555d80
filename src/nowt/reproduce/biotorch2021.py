"""Sanfiz and Akrout 2021, BioTorch: its published benchmark tables (MNIST LeNet, CIFAR-10 ResNet-20) for
backprop, feedback alignment, DFA and the sign-symmetry family (usf, brsf, frsf)."""

from __future__ import annotations

from nowt.reproduce.entry import Reproduction

PAPER = "Sanfiz and Akrout 2021, BioTorch (published benchmark, github.com/jsalbert/biotorch)"
RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf")
#: top-1 test error % per rule: MNIST LeNet, CIFAR-10 ResNet-20 (SGD)
MNIST = {"bp": 0.91, "fa": 1.7, "dfa": 1.61, "usf": 0.94, "brsf": 0.91, "frsf": 0.97}
CIFAR10 = {"bp": 8.63, "fa": 32.16, "dfa": 45.94, "usf": 10.05, "brsf": 11.02, "frsf": 11.2}

ENTRIES = [
    Reproduction(
        name="biotorch-mnist", paper=PAPER, table="MNIST LeNet, top-1 error",
        config=dict(dataset="mnist", model="lenet", optimizer="sgd", lr=0.01, momentum=0.9, batch_size=128,
                    lr_schedule="cosine", epochs=100),
        runs={r: {"rule": r} for r in RULES},
        published={r: {"best_test_error": e} for r, e in MNIST.items()},
        quick=dict(epochs=2, train_size=10000),
        notes="BioTorch's own optimiser settings are not in our notes; the SGD recipe here is ours."),
    Reproduction(
        name="biotorch-cifar10", paper=PAPER, table="CIFAR-10 ResNet-20 (SGD), top-1 error",
        config=dict(dataset="cifar10", model="resnet20", optimizer="sgd", lr=0.1, momentum=0.9,
                    weight_decay=1e-4, batch_size=128, lr_schedule="cosine", epochs=160, augment=True),
        runs={r: {"rule": r} for r in RULES},
        published={r: {"best_test_error": e} for r, e in CIFAR10.items()},
        quick=dict(epochs=1, train_size=2000),
        notes="BioTorch's exact schedule is not in our notes; the usual ResNet-20 SGD recipe here is ours."),
]
