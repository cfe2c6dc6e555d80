"""How `TrainConfig`'s fields are declared, generated and checked.

A field's metadata carries its help text, choices, range and flag name, so the command line (`nowt.cli`
builds its flags from the fields), TOML files and Python callers share one set of defaults and one validation
path (`check_value`). metadata keys: help (str), choices (tuple, or a function returning the names, for
registries filled at import time), flag (the CLI flag when not --field-name), metavar, min / gt / lt (numeric
bounds, also for each entry of a tuple), length (entries of a tuple), cli (False: no flag), rule_option (True:
passed to the rules that declare it).

Rule options are not written here or in config.py: each rule declares its own (`nowt.rules.Option`) and
`with_rule_options` makes a field of each (`option_field`) from the registry (`nowt.rules.config_options`).
The fields follow the registry: a rule registered after `nowt.train` was imported gets its fields, in place on
the same class, the next time a TrainConfig is made or `FIELDS` is read (and loses them when it leaves the
registry). What was built before that (a TrainConfig, an argparse parser) keeps what it had: build the CLI's
parser after registering.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Union, get_args, get_origin

from nowt.rules import Option, config_options

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # Python 3.10 (typing_extensions: a dependency of torch)
    from typing_extensions import dataclass_transform
from nowt.rules.base import bounds_text, in_bounds


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A dataclass field whose metadata the CLI and `validate` read."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def option_field(option: Option) -> Any:
    """The TrainConfig field of a rule option: its help, choices, bounds, flag and default, with what the
    option's `train` changes for `nowt train`."""
    meta: dict[str, Any] = {**option.bounds(**option.train), "rule_option": True}
    for key in ("choices", "flag", "metavar", "length"):
        if getattr(option, key) is not None:
            meta[key] = getattr(option, key)
    return _f(option.train.get("default", option.default), option.help, **meta)


class RuleOptionFields(type):
    """The metaclass of a `with_rule_options` class: its fields follow the registry when one is made."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        sync_rule_fields(cls)
        return super().__call__(*args, **kwargs)


@dataclass_transform(field_specifiers=(field, _f))
def with_rule_options(after: str) -> Callable[[type], type]:
    """A dataclass of the class's own fields (each made by `_f`) and, after its field `after`, one field per
    rule option in the registry (`option_field`), kept in step with it by `sync_rule_fields`."""
    def build(cls: Any) -> type:  # gains the attributes `sync_rule_fields` reads
        own = [(name, hint, cls.__dict__[name]) for name, hint in cls.__annotations__.items()]
        if after not in cls.__annotations__ or not all(isinstance(f, Field) for _, _, f in own):
            raise TypeError(f"{cls.__name__}: every field needs a _f(...) default and {after!r} must be one")
        cls.__own_fields__, cls.__options_after__, cls.__rule_options__ = own, after, None
        sync_rule_fields(cls)
        return cls
    return build


def sync_rule_fields(cls: Any) -> None:
    """Rebuilds `cls`'s dataclass fields in place when the registry's rule options differ from its own."""
    options = config_options()
    had = cls.__rule_options__
    if had is not None and list(had) == list(options) and all(had[k] is options[k] for k in had):
        return
    clash = sorted(set(options) & {name for name, _, _ in cls.__own_fields__})
    if clash:
        raise ValueError(f"rule option(s) {clash} share a name with {cls.__name__}'s own fields")
    for name in [*(had or ()), "__init__", "__repr__", "__eq__", "__hash__", "__match_args__"]:
        if name in cls.__dict__:
            delattr(cls, name)
    annotations = {}
    for name, hint, f in cls.__own_fields__:
        annotations[name] = hint
        setattr(cls, name, f)
        if name == cls.__options_after__:
            for option in options.values():
                annotations[option.name] = option.hint
                setattr(cls, option.name, option_field(option))
    cls.__annotations__ = annotations
    cls.__rule_options__ = dict(options)
    dataclass(cls)


class FieldsByName(Mapping):
    """A dataclass's fields by name, read when asked (so rule options registered since are there)."""

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def _fields(self) -> dict[str, Field]:
        sync_rule_fields(self.cls)
        return {f.name: f for f in fields(self.cls)}

    def __getitem__(self, name: str) -> Field:
        return self._fields()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())


def flag_name(f: Field) -> str:
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def choices_of(f: Field) -> list[str] | None:
    choices = f.metadata.get("choices")
    return list(choices() if callable(choices) else choices) if choices is not None else None


def is_default(f: Field, value: Any) -> bool:
    default = f.default_factory() if f.default is MISSING and callable(f.default_factory) else f.default
    return (tuple(value) if isinstance(value, list) else value) == default  # a TOML list is a tuple field


_PLURAL = {int: "integers", float: "numbers"}


def _describe(kind: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            dict: "a table"}.get(kind, str(kind))


def _bounds(f: Field) -> str:
    return bounds_text(f.metadata)


def _in_range(f: Field, x: float) -> bool:
    return in_bounds(f.metadata, x)


def _scalar(kind: type, value: Any) -> Any:
    """`value` as `kind`, or a TypeError: no bool for a number, no float for an int, no str for a bool."""
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise TypeError
    if kind is float:
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise ValueError("must be a finite number, got an integer too large for one") from None
        if not math.isfinite(value):  # NaN passes every bound and compares unequal to itself
            raise ValueError(f"must be a finite number, got {value!r}")
    return value


def parse_list(text: str, kind: type = int) -> tuple:
    """"500,500" -> (500, 500), "0.9,0.999" -> (0.9, 0.999) (kind float): a tuple field's flag (and TOML
    string) form."""
    try:
        return tuple(kind(h) for h in text.split(",") if h.strip())
    except ValueError:
        example = "1000 or 500,500" if kind is int else "0.9,0.999"
        raise ValueError(f"takes comma-separated {_PLURAL[kind]} like {example}, got {text!r}") from None


def check_value(f: Field, hint: Any, value: Any) -> Any:
    """`value` of field `f` (type `hint`) checked and normalised; ValueError naming the key and flag."""
    name = f"{f.name} ({flag_name(f)})"
    optional = get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    kind = next(a for a in get_args(hint) if a is not type(None)) if optional else hint
    if value is None and optional:
        return None
    bounds = _bounds(f)
    try:
        if get_origin(kind) is tuple:
            element = get_args(kind)[0]
            if isinstance(value, str):
                value = parse_list(value, element)
            if not isinstance(value, list | tuple):
                raise TypeError
            value = tuple(_scalar(element, v) for v in value)
            items = value
        else:
            value = _scalar(get_origin(kind) or kind, value)
            items = (value,) if isinstance(value, int | float) and not isinstance(value, bool) else ()
    except TypeError:
        what = f"a list of {_PLURAL[get_args(kind)[0]]}" if get_origin(kind) is tuple else _describe(kind)
        what += f" {bounds}" if bounds else ""
        what += " or none" if optional else ""
        raise ValueError(f"{name} expects {what}, got {value!r} ({type(value).__name__})") from None
    except ValueError as e:
        raise ValueError(f"{name} {e}") from None
    if not all(_in_range(f, x) for x in items):
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise ValueError(f"unknown {f.name} {value!r} ({flag_name(f)}); choose from: {', '.join(choices)}")
    return value
