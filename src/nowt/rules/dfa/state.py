"""State-dict glue for DFA's lazily made buffers: B and its shape are created at the first forward, so a
fresh model must create them from the state it loads."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from nowt.rules.base import LayerLike


def buffer(module: LayerLike, name: str) -> Tensor | None:
    """A buffer if registered; never `layer.feedback`'s materialising fallback."""
    return module._buffers.get(name)


def adopt_buffers(names: tuple[str, ...]) -> Callable[..., None]:
    """load_state_dict pre-hook: buffers created at the first forward are created from the state to load.
    (A partial of a module-level function, not a closure: the model stays picklable.)"""
    return functools.partial(_adopt_buffers, names)


def _adopt_buffers(names: tuple[str, ...], module: nn.Module, state_dict, prefix: str, *args) -> None:
    for name in names:
        key = prefix + name
        if key in state_dict and buffer(module, name) is None:
            # the module's own device (a whole model has no .weight): not the state's, often the CPU
            ref = next(itertools.chain(module.parameters(), module.buffers()), state_dict[key])
            module.register_buffer(name, torch.empty_like(state_dict[key], device=ref.device))


def anchor(module: LayerLike) -> Tensor:
    """The tensor whose device (and, where B is stored, dtype) a module's B takes: a layer's weight, or the
    first parameter of a block (`blocks`)."""
    weight = getattr(module, "weight", None)
    return weight if isinstance(weight, Tensor) else next(module.parameters())
