"""The checks of the data `fit` trains and tests on, before any of it is used: a one-line ValueError naming
what does not fit (an empty part, a pair that is not two tensors, labels that are no class indices, train
and test examples of different shapes), where torch would fail deep inside a reshape, a matmul or the loss."""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Any

import torch
from torch import Tensor


def check_data(train: Any, test: Any) -> None:
    """Refuses `train` / `test` (each an (inputs, labels) tuple of tensors or a Dataset) that cannot be
    trained and scored on: either part empty; a tuple that is not two tensors, or a dict or a list of two
    tensors in its place; labels that are not class indices >= 0 of dtype long (or uint8); tensor parts
    whose examples (inputs, or labels) differ in shape."""
    for name, part in (("training", train), ("test", test)):
        pair = isinstance(part, list) and len(part) == 2 and all(isinstance(t, Tensor) for t in part)
        if isinstance(part, Mapping) or pair:  # else read as a Dataset: part[0] a key error, or all of X
            hint = " of two tensors: pass a tuple" if pair else ""
            raise ValueError(f"the {name} data must be an (inputs, labels) tuple of tensors or a Dataset, "
                             f"got a {type(part).__name__}{hint}")
        if isinstance(part, tuple):
            if len(part) != 2 or not all(isinstance(t, Tensor) for t in part):
                kinds = ", ".join(type(t).__name__ for t in part)
                raise ValueError(f"the {name} data must be an (inputs, labels) pair of tensors, got "
                                 f"{len(part)} items ({kinds})")
            inputs, labels = part
            if inputs.dim() < 2 or labels.dim() < 1:
                raise ValueError(f"the {name} inputs must be [N, ...] (a batch dimension, then each "
                                 f"example's) and labels [N, ...], got {list(inputs.shape)} and "
                                 f"{list(labels.shape)}")
            if labels.dtype not in (torch.long, torch.uint8):  # the two cross-entropy takes
                hint = ": pass labels.long()" if not labels.is_floating_point() else ""
                raise ValueError(f"the {name} labels must be integer class indices (torch.long), got "
                                 f"{labels.dtype}{hint}")
            if labels.numel() and int(labels.min()) < 0:
                raise ValueError(f"the {name} labels must be class indices >= 0, got {int(labels.min())}")
        size = len(part[1]) if isinstance(part, tuple) else len(part) if isinstance(part, Sized) else None
        if size == 0:
            raise ValueError(f"the {name} set is empty")
    if isinstance(train, tuple) and isinstance(test, tuple):
        for what, i in (("inputs", 0), ("labels", 1)):
            ours, theirs = list(train[i].shape[1:]), list(test[i].shape[1:])
            if ours != theirs:
                raise ValueError(f"the training {what} are {ours} per example, test {what} {theirs}: "
                                 f"give both parts examples of one shape")
