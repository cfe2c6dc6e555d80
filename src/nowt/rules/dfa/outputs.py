"""Which tensor of a model's output DFA takes the error e of, and how the recorded one is put back.

The rule, with `output=None` (the default): a tensor is itself; a mapping (a dict, a Hugging Face
`ModelOutput`) gives its `"logits"` entry, or else its one tensor entry of at least 2 dims; a tuple or list
its one tensor element of at least 2 dims (a scalar loss and nested tuples such as hidden states or caches
do not count); any other object its tensor attribute `logits`. Anything else, or two candidates, is an
error asking for `output=`: a key of a mapping, an attribute name, an index of a tuple, or a callable that
returns the tensor from the output (one of the output's own tensors, found by identity, nested up to 3
levels deep; a tensor computed from them is not the one the loss will use, so it is refused).

The chosen tensor is replaced in the output by the identity that records e: a mapping and an object are
updated in place (so a `ModelOutput`'s item and attribute both hold it), a tuple or list is rebuilt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

#: One step into an output: ("item", key or index) or ("attr", name).
Step = tuple[str, Any]
OutputSpec = str | int | Callable[[Any], Tensor] | None


def _children(obj: Any) -> list[tuple[Step, Any]]:
    if isinstance(obj, Mapping):
        return [(("item", k), v) for k, v in obj.items()]
    if isinstance(obj, (tuple, list)):
        return [(("item", i), v) for i, v in enumerate(obj)]
    return [(("attr", k), v) for k, v in vars(obj).items()] if hasattr(obj, "__dict__") else []


def _find(obj: Any, target: Tensor, depth: int = 3) -> list[Step] | None:
    for step, child in _children(obj):
        if child is target:
            return [step]
        if depth > 1 and not isinstance(child, Tensor):
            path = _find(child, target, depth - 1)
            if path is not None:
                return [step, *path]
    return None


def _get(obj: Any, step: Step) -> Any:
    kind, key = step
    return obj[key] if kind == "item" else getattr(obj, key)


def _put(obj: Any, path: list[Step], value: Any) -> Any:
    """`obj` with the entry at `path` set to `value`."""
    (kind, key), rest = path[0], path[1:]
    value = _put(_get(obj, path[0]), rest, value) if rest else value
    if kind == "attr":
        setattr(obj, key, value)
    elif isinstance(obj, tuple):
        items = list(obj)
        items[key] = value
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)  # a namedtuple or tuple
    elif isinstance(obj, list):
        return [value if i == key else v for i, v in enumerate(obj)]
    else:
        old = obj[key]
        obj[key] = value
        if isinstance(key, str) and getattr(obj, key, None) is old:  # an attribute view kept apart
            setattr(obj, key, value)
    return obj


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"{type(obj).__name__} with keys {list(obj)}"
    return type(obj).__name__


def _default(output: Any) -> list[Step] | None:
    if isinstance(output, Tensor):
        return []
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return [("item", "logits")]
    if not isinstance(output, (Mapping, tuple, list)):
        if isinstance(getattr(output, "logits", None), Tensor):
            return [("attr", "logits")]
        return None
    found = [step for step, v in _children(output) if isinstance(v, Tensor) and v.dim() >= 2]
    return found if len(found) == 1 else None


def pick(output: Any, spec: OutputSpec, rule: str) -> tuple[Tensor, list[Step]]:
    """The tensor of `output` that e is the gradient of, and where it sits (`put` puts another there)."""
    if spec is None:
        path = _default(output)
        if path is None:
            raise ValueError(f"{rule}: the model returned {_describe(output)}, not one [N, n_out] (or "
                             f"[N, T, n_out]) logits tensor to take the error e of; name it with output= (a "
                             f"key, an attribute, an index or a callable)")
    elif callable(spec):
        chosen = spec(output)
        path = [] if chosen is output else _find(output, chosen) if isinstance(chosen, Tensor) else None
        if path is None:
            raise ValueError(f"{rule}: output= must return one of the tensors the model returned (the one "
                             f"the loss uses), got {_describe(chosen)} not found in {_describe(output)}")
    else:
        if isinstance(spec, str) and spec in getattr(output, "_fields", ()):  # a namedtuple's field
            spec = output._fields.index(spec)
        kind = "item" if isinstance(output, Mapping) or isinstance(spec, int) else "attr"
        try:
            path = [(kind, spec)]
            _get(output, path[0])
        except (KeyError, IndexError, AttributeError, TypeError):
            raise ValueError(f"{rule}: output={spec!r} is not in the model's output, "
                             f"{_describe(output)}") from None
    tensor = output
    for step in path:
        tensor = _get(tensor, step)
    if not isinstance(tensor, Tensor):
        raise ValueError(f"{rule}: output={spec!r} picks {_describe(tensor)}, not a tensor")
    return tensor, path


def put(output: Any, path: list[Step], value: Tensor) -> Any:
    """`output` with `value` in place of the picked tensor (the output itself when it is that tensor)."""
    return _put(output, path, value) if path else value
