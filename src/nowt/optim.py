"""The optimizers nowt builds by name, for `nowt train` and for noise pretraining alike."""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: name -> (optimizer class, whether it takes momentum)
OPTIMIZERS = {"sgd": (torch.optim.SGD, True), "adam": (torch.optim.Adam, False),
              "adamw": (torch.optim.AdamW, False), "rmsprop": (torch.optim.RMSprop, True)}


def make_optimizer(name: str, params: Iterable, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """`name` (sgd, adam, adamw, rmsprop) over `params` (tensors or parameter groups); momentum is used by
    sgd and rmsprop only."""
    if name.lower() not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose {', '.join(OPTIMIZERS)}")
    cls, uses_momentum = OPTIMIZERS[name.lower()]
    extra = {"momentum": momentum} if uses_momentum else {}
    return cls(params, lr=lr, weight_decay=weight_decay, **extra)
